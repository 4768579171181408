"Shared fixtures: the real TotalSegmentator mini fixture in ../shared, temporary configurations, toy datasets."
import os, shutil
from pathlib import Path
import pytest
import yaml
from sail.core import project_root, load_config

ROOT = project_root()
SHARED = Path(os.environ.get('SAIL_SHARED', ROOT.parent/'shared'))
MINI = SHARED/'data'/'totalseg-mini'

@pytest.fixture(scope='session')
def mini() -> Path:
    "The real two-scan TotalSegmentator fixture; missing → skip locally, fail in CI (SAIL_REQUIRE_FIXTURES=1)."
    if not (MINI/'CT_Dataset_v201'/'meta.csv').exists():
        msg = f"fixture {MINI} is missing (set SAIL_SHARED to the folder holding data/totalseg-mini)"
        if os.environ.get('SAIL_REQUIRE_FIXTURES') == '1': pytest.fail(msg)
        pytest.skip(msg)
    return MINI

@pytest.fixture
def make_config(tmp_path):
    "Write a configuration YAML into tmp_path and load it: make_config(name=..., data={...}, ...)."
    def _make(check_paths=True, **sections):
        d = {'name': f"_pytest_{tmp_path.name}", 'workers': 1} | sections
        p = tmp_path/f"{d['name']}.yaml"
        p.write_text(yaml.safe_dump(d))
        return load_config(p, check_paths=check_paths)
    yield _make
    shutil.rmtree(ROOT/'runs'/f"_pytest_{tmp_path.name}", ignore_errors=True)

@pytest.fixture
def mini_copy(mini, tmp_path) -> Path:
    "A writable copy of the mini fixture, for tests that break it."
    dst = tmp_path/'TotalSegmentator'
    shutil.copytree(mini, dst)
    return dst
