"""The notebook executor (`sail.pipeline.execute_notebook`) and what `sail run` does when it is killed.

The kill test stops a real `sail run` at a deterministic point (`sail.core.stop_point`: the kernel sends the signal
to the driver after the second finished scan), never after a sleep."""
import os, sys, json, shutil, secrets, subprocess, time
from pathlib import Path
import nbformat, pytest
from sail.config import load_config, to_dict
from sail.core import run_paths, show_path
from sail.pipeline import execute_notebook, StepFailed

from conftest import ROOT, SMOKE_YAML, TOKEN, processes_with, none_left


def write_nb(path:Path, *cells)->Path:
    "A notebook of `cells`: strings are code cells, ('md', text) markdown, ('parameters', src) the parameters cell."
    out = []
    for c in cells:
        if isinstance(c, tuple) and c[0] == 'md': out.append(nbformat.v4.new_markdown_cell(c[1]))
        elif isinstance(c, tuple): out.append(nbformat.v4.new_code_cell(c[1], metadata={'tags': ['parameters']}))
        else: out.append(nbformat.v4.new_code_cell(c))
    nb = nbformat.v4.new_notebook(cells=out)
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nbformat.write(nb, path)
    return path


def test_process_scan_finds_a_process_by_its_token():
    tok = secrets.token_hex(6)
    p = subprocess.Popen([sys.executable, '-c', 'import sys; print("ready", flush=True); sys.stdin.read()'], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=os.environ | {TOKEN: tok})
    # Popen returns once the child called execve (vfork), which can be before the kernel has set up the new program's
    # environment block (/proc/PID/environ reads empty then): wait for the child to say it runs.
    try: assert p.stdout.readline() == 'ready\n' and processes_with(tok) == [p.pid]
    finally: p.stdin.close(); p.wait(30)
    assert none_left(tok) == []

# ---------------------------------------------------------------- the record, the step name and the configuration

RUN_CELL = """#| run
from sail.config import load_config
from sail.core import record_step, run_paths
cfg = load_config(config)
out = run_paths(cfg).run/'tiny.txt'; out.parent.mkdir(parents=True, exist_ok=True); out.write_text('tiny')
record_step(cfg, {'tiny': out}, {'name': cfg.name, 'source': cfg.source, 'config_type': type(config).__name__, 'force': force,
                                 'cwd': os.getcwd(), 'headless': os.environ.get('SAIL_HEADLESS'), 'extra': os.environ.get('SAIL_EXTRA')})"""

def test_executor_returns_the_kernels_record(make_config, tmp_path):
    (tmp_path/'ts').mkdir()
    yml = make_config(path=True, data={'totalseg_root': str(tmp_path/'ts'), 'dir': str(tmp_path/'data')})
    cfg = load_config(yml)
    given = dict(to_dict(cfg), source=cfg.source)
    yml.unlink()                                                            # the kernel cannot read the YAML: it gets the data
    nb = write_nb(tmp_path/'07_tiny.ipynb', ('md', '# Tiny step'), ('parameters', "config: str = 'smoke'\nforce: bool = False"),
                  "raise RuntimeError('a lesson: the pipeline does not run it')", 'import os', RUN_CELL)
    out = tmp_path/'out'/'07_tiny.ipynb'
    ex = execute_notebook(nb, out, {'config': given, 'force': True}, cwd=ROOT, env={'SAIL_EXTRA': 'x'})
    assert ex.record['step'] == '07_tiny'                                   # from the notebook's name
    assert ex.record['summary'] == dict(name=cfg.name, source=str(yml), config_type='dict', force=True, cwd=str(ROOT), headless='1', extra='x')
    assert ex.record['outputs'] == {'tiny': show_path(run_paths(cfg).run/'tiny.txt')}
    assert ex.record == json.loads((run_paths(cfg).steps/'07_tiny.json').read_text())   # the same record the step wrote
    assert ex.seconds > 0
    kept = nbformat.read(out, as_version=4)
    assert [c.metadata.get('tags', []) for c in kept.cells if c.cell_type == 'code'] == [['parameters'], ['injected-parameters'], [], []]
    assert kept.cells[-1].source == RUN_CELL and not any('a lesson' in c.source for c in kept.cells)   # lessons left out, no record cell left
    assert "config = {'name': " in kept.cells[2].source
    assert ex.notebook.cells[-1].source == RUN_CELL

def test_executor_without_a_record_and_the_step_name_given(tmp_path):
    nb = write_nb(tmp_path/'nb.ipynb', "#| run\nimport os\nstep = os.environ['SAIL_STEP']", '#| run\nstep')
    ex = execute_notebook(nb, step='99_named')
    assert ex.record == {} and ex.notebook.cells[-1].outputs[0]['data']['text/plain'] == "'99_named'"

# ---------------------------------------------------------------- failures

def test_failing_cell_names_step_cell_and_error_and_stops_the_kernel(tmp_path):
    tok = secrets.token_hex(6)
    nb = write_nb(tmp_path/'05_broken.ipynb', '#| run\nx = 1', '#| eval: false\nraise SystemExit', '# a lesson\nx = 2',
                  '#| run\n\nvalue = x + 1\nraise ValueError(f"broken on purpose: {value}")', '#| run\nprint("never")')
    out = tmp_path/'out'/'05_broken.ipynb'
    with pytest.raises(StepFailed) as e: execute_notebook(nb, out, env={TOKEN: tok})
    msg = str(e.value)
    assert 'step 05_broken failed in cell 1 (`value = x + 1`) of 05_broken.ipynb: ValueError: broken on purpose: 2' in msg
    assert str(out) in msg and (e.value.cell, e.value.error) == (1, 'ValueError: broken on purpose: 2')
    kept = nbformat.read(out, as_version=4)
    assert kept.cells[1].outputs[-1].output_type == 'error' and kept.cells[2].outputs == []
    assert none_left(tok) == []                                             # no kernel left behind
    with pytest.raises(StepFailed) as e: execute_notebook(nb, cells='all')  # all cells: the lesson runs, `eval: false` does not
    assert 'failed in cell 3' in str(e.value) and 'broken on purpose: 3' in str(e.value)

# ---------------------------------------------------------------- killing `sail run`

WRAPPER = "import os, sys; os.environ['SAIL_STOP_PID'] = str(os.getpid()); from sail.cli import main; sys.exit(main(sys.argv[1:]))"

def sail_run(cfg:Path, env:dict|None=None, timeout:float=600)->subprocess.CompletedProcess:
    "`sail run cfg --steps demo slices`, the driver telling its kernels its own pid as `SAIL_STOP_PID`."
    e = {k: v for k, v in os.environ.items() if not k.startswith('SAIL_STOP_')} | (env or {})
    return subprocess.run([sys.executable, '-c', WRAPPER, 'run', str(cfg), '--steps', 'demo', 'slices'], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=timeout)

@pytest.mark.parametrize('sig,code', [('TERM', 143), ('INT', 130)])
def test_killed_run_stops_its_kernel_and_resumes(tmp_path, sig, code):
    name = f'_pytest_kill_{sig}_{secrets.token_hex(4)}'                      # unique also across xdist workers (same tmp_path names)
    cfg = tmp_path/'smoke.yaml'
    cfg.write_text(SMOKE_YAML.format(name=name, tmp=tmp_path))
    data, run = tmp_path/'data', ROOT/'runs'/name
    try:
        r = sail_run(cfg)                                                   # the uninterrupted reference
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        reference = (data/'slices.parquet').read_bytes()
        shutil.rmtree(data)                                                 # slice again from nothing (the demo data stays)
        tok = secrets.token_hex(6)
        r = sail_run(cfg, {'SAIL_STOP_AT': 'slices:scan:2', 'SAIL_STOP_SIGNAL': sig, TOKEN: tok})
        assert r.returncode == code, r.stdout[-2000:] + r.stderr[-3000:]
        assert f"03_slices: interrupted by SIG{sig}" in r.stdout and f'stopped by SIG{sig}' in r.stderr
        assert 'never retrieved' not in r.stderr
        m = json.loads((run/'manifest.json').read_text())
        assert m['steps']['02_demo']['status'] == 'done' and m['steps']['03_slices']['status'] == 'interrupted'
        assert m['steps']['03_slices']['outputs'] == {}                     # nothing from the earlier run shown as this one's
        assert none_left(tok) == []                                         # the kernel and its slicing workers are gone
        assert not (data/'slices.parquet').exists()                         # nothing half-written
        r = sail_run(cfg)                                                   # resume, without the hook
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert (data/'slices.parquet').read_bytes() == reference
        m = json.loads((run/'manifest.json').read_text())
        assert m['steps']['03_slices']['status'] == 'done' and m['steps']['03_slices']['summary']['n_scans'] == 12
    finally: shutil.rmtree(run, ignore_errors=True)

# ---------------------------------------------------------------- the docs refresh uses the same executor

def test_docs_execution_runs_every_cell_with_the_notebooks_name(tmp_path):
    from sail.docs import execute_for_docs
    nb = write_nb(tmp_path/'04_page.ipynb', ('parameters', "# parameters (a first line `config...` would be IPython's %config)\nconfig: str = 'smoke'"), 'import os\nprint(config, os.environ["SAIL_STEP"], os.environ["TQDM_DISABLE"])',
                  '#| eval: false\nraise SystemExit', '# a lesson: runs for the site\n6 * 7')
    done = execute_for_docs(nb, 'demo')
    assert len(done.cells) == 4 and done.cells[1].outputs[0].text == 'demo 04_page 1\n'    # source untouched, outputs fresh
    assert done.cells[2].outputs == [] and done.cells[3].outputs[0]['data']['text/plain'] == '42'

def test_unanswered_kernel_info_is_asked_again(tmp_path, monkeypatch):
    """A kernel_info request that is never answered (seen in CI: the smoke run hung 1500 s in nbclient's unlimited wait)
    is sent again. Our first request is dropped on purpose: its id is returned but nothing is sent."""
    import sail.pipeline as pl
    calls, real_ask = [], pl._Client._async_kernel_info
    async def ask(self, wait, tries):
        real = self.kc.kernel_info
        def dropping():
            calls.append(len(calls))
            return 'lost-request' if len(calls) == 1 else real()
        self.kc.kernel_info = dropping
        return await real_ask(self, 2.0, tries)
    monkeypatch.setattr(pl._Client, '_async_kernel_info', ask)
    ex = execute_notebook(write_nb(tmp_path/'t.ipynb', "#| run\nx = 6 * 7", "#| run\nx"), step='t')
    assert ex.notebook.cells[-1].outputs[0]['data']['text/plain'] == '42'
    assert calls == [0, 1]                      # the dropped request, then the one that was answered

def test_cell_past_its_timeout_fails_the_step_and_stops_the_kernel(tmp_path):
    "A cell that never returns (here: waiting on an event nobody sets) fails its step at `timeout`, named, with no kernel left."
    tok = secrets.token_hex(6)
    nb = write_nb(tmp_path/'07_hangs.ipynb', '#| run\nimport threading', '#| run\nthreading.Event().wait()', '#| run\nprint("never")')
    with pytest.raises(StepFailed) as e: execute_notebook(nb, env={TOKEN: tok}, timeout=3)
    assert e.value.cell == 1 and e.value.error.startswith('CellTimeoutError') and '`threading.Event().wait()`' in str(e.value)
    assert none_left(tok) == []
