"""papermill batch reproduction, as users type it: one step notebook run through papermill's own API with only the
`config` parameter, from a working directory outside the project, on a finished smoke run."""
import json, time
from types import SimpleNamespace
import pandas as pd, pytest
from conftest import ROOT

pytestmark = pytest.mark.xdist_group('smoke')   # reads (and re-records one step of) the shared smoke run

STEP = '04_split'
HELD_OUT = {'A', 'D', 'E'}   # the smoke configuration's split.test_institutes

def run_step(config, run, out_dir):
    "Run nbs/<STEP>.ipynb with papermill for the configuration `config`, the kernel in `out_dir` (outside the project)."
    papermill = pytest.importorskip('papermill')
    started = time.time()
    out = out_dir/f'{STEP}.ipynb'
    papermill.execute_notebook(str(ROOT/'nbs'/f'{STEP}.ipynb'), str(out), parameters=dict(config=str(config)),
                               kernel_name='python3', cwd=str(out_dir), progress_bar=False)
    return SimpleNamespace(out=out, run=run, started=started)

@pytest.fixture(scope='module')
def by_papermill(smoke_run, tmp_path_factory):
    "The split step of the smoke run, executed again by papermill."
    return run_step(smoke_run.config, smoke_run.run, tmp_path_factory.mktemp('papermill')), smoke_run

def test_papermill_runs_the_step_with_the_parameter(by_papermill):
    pm, smoke = by_papermill
    nb = json.loads(pm.out.read_text())
    injected = [c for c in nb['cells'] if 'injected-parameters' in c['metadata'].get('tags', [])]
    assert len(injected) == 1 and str(smoke.config) in ''.join(injected[0]['source'])
    outputs = [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    errors = [o for o in outputs if o['output_type'] == 'error']
    assert errors == []
    data = smoke.data
    split = pd.read_csv(data/'split.csv', dtype=str, keep_default_na=False)
    slices = pd.read_parquet(data/'slices.parquet', columns=['modality', 'image_id', 'institute'])
    scans = slices.drop_duplicates(['modality', 'image_id'])
    m = scans.merge(split, on=['modality', 'image_id'], how='outer', validate='one_to_one', indicator=True)
    assert (m._merge == 'both').all()                                     # every sliced scan has exactly one split
    assert ((m.split == 'test') == m.institute.isin(HELD_OUT)).all()      # test = exactly the held-out institutes
    assert set(m.split) == {'train', 'val', 'test'}
    shown = [o for c in nb['cells'] if c['source'] and ''.join(c['source']).startswith('#| run')
             for o in c.get('outputs', []) if o['output_type'] == 'execute_result']
    assert shown, 'the run cells showed no result'

def test_papermill_records_the_step_under_its_name(by_papermill):
    pm, smoke = by_papermill
    p = smoke.run/'steps'/f'{STEP}.json'
    rec = json.loads(p.read_text())
    assert rec['step'] == STEP and p.stat().st_mtime >= pm.started             # written by the papermill run
    split = pd.read_csv(smoke.data/'split.csv', dtype=str, keep_default_na=False)
    assert rec['summary'] == split.split.value_counts().to_dict()              # the counts of the file it wrote
    side = json.loads((smoke.data/'split.json').read_text())
    assert rec['outputs']['split']['digest'] == side['digest']
