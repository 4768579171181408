"Kill-and-resume for the codes, evaluation and interpretation steps: killed at a deterministic item, resumed, byte-identical to the uninterrupted run."
import shutil, uuid, yaml
from pathlib import Path
import pytest
from conftest import kill_at, ROOT

STEPS = {  # step: (stop point, call, output folder under the run, files compared)
    'codes': ('codes:split', 'from sail.codes import write_codes; from sail.train import trained_saes; [write_codes(c.paths, c.sae, c.device, r.encoder, r.variant, r.config) for r in trained_saes(c.paths)]', 'codes', ['train.parquet', 'train.stats.parquet', 'val.parquet', 'val.stats.parquet', 'test.parquet', 'test.stats.parquet']),
    'probes': ('probes:config', 'from sail.probes import run_probes; run_probes(c.paths, c.eval, c.workers)', 'results/probes', ['metrics.parquet', 'coefficients.parquet', 'recovery.parquet', 'recovery_summary.parquet']),
    'retrieval': ('retrieval:config', 'from sail.retrieval import run_retrieval; run_retrieval(c.paths, c.retrieval, c.interpret, c.device)', 'results/retrieval', ['per_reference.parquet', 'retrieved.parquet', 'summary.csv', 'retrieval.json']),
    'autointerp': ('autointerp:feature', 'from sail.autointerp import run_autointerp; run_autointerp(c.paths, c.autointerp, c.eval, c.interpret, c.device)', 'results/autointerp', ['descriptions.parquet', 'samples.parquet', 'selected_features.csv']),
    'language': ('language:config', 'from sail.language import run_language; run_language(c.paths, c.language, c.interpret, c.device)', 'results/language', ['matches.parquet', 'retrieved.parquet', 'evaluation.csv']),
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
