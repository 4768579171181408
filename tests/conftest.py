"Shared fixtures: the real TotalSegmentator mini fixture in ../shared, temporary configurations, toy datasets."
import os, sys, shutil, subprocess, time
from pathlib import Path
import pytest
import yaml
if os.environ.get('PYTEST_XDIST_WORKER'):
    # Several xdist workers share the machine's cores: more than one intra-op thread per process oversubscribes them,
    # and OpenMP's barriers then crawl (a tiny SAE trains 3-5x slower). Set before torch is imported; the kernels,
    # Ray workers and other subprocesses the tests start inherit it.
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(var, '1')
from sail.core import project_root
from sail.config import load_config

ROOT = project_root()
SHARED = Path(os.environ.get('SAIL_SHARED', ROOT.parent/'shared'))
MINI = SHARED/'data'/'totalseg-mini'

def shared_fixture(folder:Path, probe:str)->Path:
    "`folder` of ../shared/data when it holds `probe`; missing → skip locally, fail in CI (SAIL_REQUIRE_FIXTURES=1)."
    if not (folder/probe).exists():
        msg = f"fixture {folder} is missing (set SAIL_SHARED to the folder holding data/{folder.name})"
        if os.environ.get('SAIL_REQUIRE_FIXTURES') == '1': pytest.fail(msg)
        pytest.skip(msg)
    return folder

@pytest.fixture(scope='session')
def mini() -> Path:
    "The real two-scan TotalSegmentator fixture."
    return shared_fixture(MINI, 'CT_Dataset_v201/meta.csv')

def write_config(folder:Path, name:str, **sections)->Path:
    "The one way tests write a configuration: `name`, one worker unless given, and the given sections, as YAML in `folder`."
    d = {'name': name, 'workers': 1} | sections
    p = Path(folder)/f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p

@pytest.fixture
def make_config(tmp_path):
    "Write a configuration YAML into tmp_path and load it: make_config(name=..., data={...}, ...)."
    made = []
    def _make(check_paths=True, path=False, **sections):
        name = sections.pop('name', f"_pytest_{tmp_path.name}")
        p = write_config(tmp_path, name, **sections); made.append(name)
        return p if path else load_config(p, check_paths=check_paths)
    yield _make
    for name in set(made) | {f"_pytest_{tmp_path.name}"}: shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def kill_at(code:str, event:str, n:int, timeout:float=600, env:dict|None=None):
    """Run `python -c code` and have it SIGKILLed exactly after the n-th `event` (`sail.core.stop_point`): a kill at a
    deterministic point, never after a sleep. Fails if the process was not killed there. The process runs in its own
    session, and whatever it started (joblib's loky workers, loader workers) is killed with it once it is dead: those
    orphans would otherwise hold its output pipes open, and idle loky workers only exit after 300 s."""
    import signal, tempfile
    e = os.environ | (env or {}) | {'SAIL_STOP_AT': f'{event}:{n}'}
    e.pop('SAIL_STOP_PID', None)
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen([sys.executable, '-c', code], stdout=out, stderr=err, text=True, env=e, cwd=ROOT, start_new_session=True)
        try: rc = p.wait(timeout=timeout)
        finally:
            try: os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        out.seek(0); err.seek(0)
        r = subprocess.CompletedProcess(p.args, rc, out.read(), err.read())
    assert r.returncode == -9, f"expected a SIGKILL at {event}:{n}, got exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r

@pytest.fixture
def mini_copy(mini, tmp_path) -> Path:
    "A writable copy of the mini fixture, for tests that break it."
    dst = tmp_path/'TotalSegmentator'
    shutil.copytree(mini, dst)
    return dst

import json, subprocess, sys
from types import SimpleNamespace

SAIL = [sys.executable, '-c', 'import sys; from sail.cli import main; sys.exit(main())']
SMOKE_YAML = """name: {name}
workers: 2
data: {{totalseg_root: {tmp}/TotalSegmentator, dir: {tmp}/data}}
demo: {{ct_torso: 6, mri_torso: 4, ct_head: 1, mri_head: 1, voxel_mm: 10.0, seed: 3}}
split: {{test_institutes: [A, D, E]}}
embed: {{encoders: [{{name: pixels}}]}}
sae: {{variants: [paper, released], families: [[8, 32]], k_patterns: [[2, 4], [4, 8]], epochs: 2, batch_size: 128, lr: 1.0e-3}}
eval: {{slices_per_scan: 20}}
retrieval: {{n_references: 100}}
autointerp: {{n_features: 12}}
language: {{slices_per_scan: 3}}
explorer: {{max_features: 40, page_features: 12, page_references: 4}}
"""

SMOKE_CELL_TIMEOUT_S = 300   # a smoke cell takes < 60 s; a hung kernel fails its step with the step and cell named

def sail(*args, timeout=900):
    """Run the `sail` command in the project root. Past `timeout` seconds the command is killed and what it printed so far
    comes back with return code -9, so a test's assertion shows where it stopped instead of a bare TimeoutExpired."""
    try: return subprocess.run(SAIL + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        text = lambda b: (b.decode(errors='replace') if isinstance(b, bytes) else b) or ''
        return subprocess.CompletedProcess(e.cmd, -9, text(e.stdout) + f"\n[killed after {timeout} s]\n", text(e.stderr))

@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
    """One whole pipeline run at smoke size (every step, both variants), shared by the tests that read a finished run.
    Built once per test session even under pytest-xdist: the first worker builds it under a file lock, the others
    wait and reuse it. (The run folder stays in runs/ for inspection; older `_pytest_smoke_*` runs are removed.)"""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base   # common to every xdist worker of this session
    tmp, name = shared/'smoke', f'_pytest_smoke_{shared.name}'
    with FileLock(str(shared/'smoke.lock')):
        done = tmp/'done.json'
        if not done.exists() or not (ROOT/'runs'/name/'manifest.json').exists():
            for old in (ROOT/'runs').glob('_pytest_smoke_*'):
                if old.name != name: shutil.rmtree(old, ignore_errors=True)
            tmp.mkdir(exist_ok=True)
            cfg = tmp/'smoke.yaml'
            cfg.write_text(SMOKE_YAML.format(name=name, tmp=tmp))
            r = sail('run', cfg, '--cell-timeout', SMOKE_CELL_TIMEOUT_S)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            done.write_text(json.dumps(dict(stdout=r.stdout)))
    return SimpleNamespace(config=tmp/'smoke.yaml', name=name, run=ROOT/'runs'/name, data=tmp/'data', tmp=tmp,
                           stdout=json.loads((tmp/'done.json').read_text())['stdout'])

def require_browser():
    "Debian's Chromium for browser tests: missing -> skip locally, fail in CI (SAIL_REQUIRE_BROWSER=1)."
    from sail.figures import find_chromium
    exe = find_chromium()
    try: import playwright  # noqa: F401
    except ImportError: exe = None
    if exe is None:
        msg = "no Chromium or no playwright: install Debian's chromium and `pip install playwright` (make browser)"
        if os.environ.get('SAIL_REQUIRE_BROWSER') == '1': pytest.fail(msg)
        pytest.skip(msg)
    return exe

TOKEN = 'SAIL_TEST_TOKEN'   # the environment variable that marks the processes a test started

def processes_with(token:str)->list:
    "Pids of live processes (not zombies) whose environment has `SAIL_TEST_TOKEN=token`."
    found, needle = [], f'\0{TOKEN}={token}\0'.encode()
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try:
            if needle not in b'\0' + (d/'environ').read_bytes(): continue
            state = (d/'stat').read_text().rsplit(')', 1)[1].split()[0]
        except OSError: continue
        if state not in ('Z', 'X'): found.append(int(d.name))
    return found

def none_left(token:str, within:float=10.0)->list:
    "Pids still alive with `token` after up to `within` seconds (processes already sent SIGKILL may take a moment to exit)."
    deadline = time.monotonic() + within
    while (left := processes_with(token)) and time.monotonic() < deadline: time.sleep(0.05)
    return left

@pytest.fixture(scope='module')
def browser():
    "A headless Chromium (Playwright), one per test module; fails where CI requires one and none is installed."
    exe = require_browser()
    from playwright.sync_api import sync_playwright
    from sail.docs import CHROMIUM_ARGS
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
