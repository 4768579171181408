"""Kill-and-resume for the codes, evaluation and interpretation steps: killed at a deterministic item, resumed,
byte-identical to the uninterrupted run. And `sail run` dies as one: killed outright, its kernel and the kernel's
workers end with it; while it lives, a second `sail run` of the same run is refused."""
import json, os, secrets, shutil, signal, subprocess, sys, time, uuid, yaml
from pathlib import Path
import pytest
from conftest import kill_at, ROOT, SMOKE_YAML, TOKEN, processes_with, none_left
from sail.pipeline import run_lock

STEPS = {  # step: (stop point, call, output folder under the run, files compared)
    'codes': ('codes:config', 'from sail.codes import write_codes; write_codes(c.paths, c.sae, c.compute)', 'codes',
              ['train.parquet', 'train.stats.parquet', 'val.parquet', 'val.stats.parquet', 'test.parquet', 'test.stats.parquet']),
    'probes': ('probes:config', 'from sail.probes import run_probes; run_probes(c.paths, c.eval, c.compute)', 'results/probes',
               ['metrics.parquet', 'coefficients.parquet', 'recovery.parquet', 'recovery_summary.parquet']),
    'retrieval': ('retrieval:config', 'from sail.retrieval import run_retrieval; run_retrieval(c.paths, c.retrieval, c.interpret, c.compute)',
                  'results/retrieval', ['per_reference.parquet', 'retrieved.parquet', 'summary.csv', 'retrieval.json']),
    'autointerp': ('autointerp:feature', 'from sail.autointerp import run_autointerp; '
                   'run_autointerp(c.paths, c.autointerp, c.eval, c.interpret, c.compute)', 'results/autointerp',
                   ['descriptions.parquet', 'samples.parquet', 'selected_features.csv']),
    'language': ('language:config', 'from sail.language import run_language; run_language(c.paths, c.language, c.interpret, c.compute)',
                 'results/language', ['matches.parquet', 'retrieved.parquet', 'evaluation.csv']),
}

@pytest.mark.parametrize('step', list(STEPS))
def test_killed_step_resumes_identically(smoke_run, tmp_path, step):
    event, call, folder, files = STEPS[step]
    name = f'_pytest_kill_{step}_{uuid.uuid4().hex[:8]}'          # unique: a folder left by a killed session never collides
    run = ROOT/'runs'/name
    shutil.copytree(smoke_run.run, run, ignore=shutil.ignore_patterns('notebooks'))
    shutil.rmtree(run/folder)                                    # this step's outputs are gone: it must redo them
    shutil.rmtree(run/'cache', ignore_errors=True)                         # and no reply cache helps
    cfg = yaml.safe_load(smoke_run.config.read_text()) | {'name': name}
    p = tmp_path/f'{name}.yaml'; p.write_text(yaml.safe_dump(cfg))
    code = f"from sail.config import load_config; c = load_config({str(p)!r}); {call}"
    try:
        kill_at(code, event, 1)                                            # killed right after the first item
        out = run/folder
        reference = smoke_run.run/folder
        import subprocess, sys
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        compared = 0
        for f in sorted(reference.glob('*/*/*/' + files[0])):
            rel = f.parent.relative_to(reference)
            for name_ in files:
                assert (out/rel/name_).read_bytes() == (reference/rel/name_).read_bytes(), f"{step}: {rel}/{name_} differs after resume"
                compared += 1
        assert compared >= len(files)
    finally:
        shutil.rmtree(run, ignore_errors=True)

def test_a_writer_killed_mid_write_leaves_no_stray_after_the_next_write(tmp_path):
    """A process SIGKILLed between writing its temporary file and renaming it leaves a half-written stray that nothing
    reads; the next complete write of the same file removes it, so a resumed run's folder equals an uninterrupted one's."""
    from sail.core import write_json
    target = tmp_path/'artifact.json'
    code = ("import os, signal; from sail.core import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('half'); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    strays = [p.name for p in tmp_path.iterdir()]
    assert len(strays) == 1 and strays[0].startswith('.artifact.json.tmp-') and not target.exists(), strays
    write_json(target, {'done': True})
    assert [p.name for p in tmp_path.iterdir()] == ['artifact.json'] and json.loads(target.read_text()) == {'done': True}

# ---------------------------------------------------------------- `sail run` dies as one, and has one writer

DRIVER = ("import os, sys; os.environ['SAIL_STOP_PID'] = str(os.getpid())\n"   # the stop point kills the driver
          "from sail.cli import main; sys.exit(main(sys.argv[1:]))")


def clean_env(**more)->dict:
    return {k: v for k, v in os.environ.items() if not k.startswith('SAIL_STOP_')} | more

def start_driver(cfg:Path, out:Path, **env)->subprocess.Popen:
    "`sail run cfg --steps slices --force` in its own session, telling its kernel its pid; output to files (no pipes)."
    return subprocess.Popen([sys.executable, '-c', DRIVER, 'run', str(cfg), '--steps', 'slices', '--force'], cwd=ROOT,
                            env=clean_env(**env), stdout=open(out/'stdout', 'w'), stderr=open(out/'stderr', 'w'),
                            start_new_session=True)

def sail_run(cfg:Path, *steps:str, timeout:float=900)->subprocess.CompletedProcess:
    "`sail run cfg --steps *steps`, to the end."
    return subprocess.run([sys.executable, '-c', DRIVER, 'run', str(cfg), '--steps', *steps], capture_output=True,
                          text=True, cwd=ROOT, env=clean_env(), timeout=timeout)

def files(folder:Path)->dict:
    "Every file under `folder` with its size and modification time."
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob('*') if p.is_file()}

@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    "A smoke configuration whose demo dataset is built (`sail run --steps demo`); (config, tmp folder, run folder)."
    tmp = tmp_path_factory.mktemp('dies')
    name = f'_pytest_dies_{uuid.uuid4().hex[:8]}'
    cfg = tmp/'smoke.yaml'; cfg.write_text(SMOKE_YAML.format(name=name, tmp=tmp))
    r = sail_run(cfg, 'demo')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    yield cfg, tmp, ROOT/'runs'/name
    shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def test_killed_sail_takes_kernel_and_workers_with_it(demo_run, tmp_path):
    "SIGKILL to `sail run` while its slicing pool works: the kernel and the pool end at once and write nothing more."
    cfg, tmp, run = demo_run
    tok = secrets.token_hex(6)
    p = start_driver(cfg, tmp_path, SAIL_STOP_AT='slices:scan:2', **{TOKEN: tok})   # the kernel kills the driver (-9)
    try: assert p.wait(timeout=600) == -signal.SIGKILL, (tmp_path/'stderr').read_text()[-3000:]
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    left = none_left(tok, within=10)
    for pid in left: os.kill(pid, signal.SIGKILL)                        # never leave them behind, even on failure
    assert left == [], f"still running 10 s after the driver was killed: {left}"
    at_kill = files(tmp/'data')            # after they ended: a worker may finish the file it was writing as it dies
    time.sleep(1)
    assert files(tmp/'data') == at_kill                                          # nothing written once they are gone
    assert not (tmp/'data'/'slices.parquet').exists()
    assert json.loads((run/'manifest.json').read_text())['steps']['03_slices']['status'] == 'running'  # no time left
    r = sail_run(cfg, 'slices')                                          # the lock died with it: the run resumes
    assert r.returncode == 0 and (tmp/'data'/'slices.parquet').exists(), r.stdout[-2000:] + r.stderr[-3000:]

def test_second_sail_run_is_refused_while_the_first_holds_the_lock(demo_run, tmp_path):
    cfg, tmp, run = demo_run
    tok = secrets.token_hex(6)
    p = start_driver(cfg, tmp_path, SAIL_STOP_AT='slices:scan:1', SAIL_STOP_SIGNAL='STOP', **{TOKEN: tok})   # frozen
    try:
        deadline = time.monotonic() + 600
        state = lambda: Path(f'/proc/{p.pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
        while state() != 'T' and time.monotonic() < deadline:
            assert p.poll() is None, (tmp_path/'stderr').read_text()[-3000:]
            time.sleep(0.1)
        r = sail_run(cfg, 'slices', timeout=300)
        lines = r.stderr.splitlines()
        assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
        lock = run/'sail-run.lock'
        assert f"{lock}: run '{run.name}' is being written by another `sail run` (pid {p.pid})" in lines[0]
    finally:
        os.kill(p.pid, signal.SIGKILL); p.wait(30)
        left = none_left(tok, within=10)
        for pid in left: os.kill(pid, signal.SIGKILL)
    assert left == []
    with run_lock(run): pass                                                     # free once its holder is gone
