"The whole data phase through papermill and the `sail` command, at smoke size."
import json, shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest, nbformat
from sail.core import project_root
from sail.pipeline import find_steps
from sail.embed import load_embeddings

ROOT = project_root()
SAIL = [sys.executable, '-c', 'import sys; from sail.pipeline import main; sys.exit(main())']

def _run(*args):
    return subprocess.run(SAIL + list(args), capture_output=True, text=True, cwd=ROOT, timeout=900)

@pytest.fixture
def smoke_config(tmp_path):
    name = f'_pytest_pipeline_{tmp_path.name}'
    p = tmp_path/'smoke.yaml'
    p.write_text(f"""name: {name}
workers: 2
data: {{totalseg_root: {tmp_path}/TotalSegmentator, dir: {tmp_path}/data}}
demo: {{ct_torso: 6, mri_torso: 4, ct_head: 1, mri_head: 1, voxel_mm: 10.0, seed: 3}}
split: {{test_institutes: [A, D, E]}}
embed: {{encoders: [{{name: pixels}}]}}
sae: {{variants: [paper, released], families: [[8, 32]], k_patterns: [[2, 4], [4, 8]], epochs: 2, batch_size: 128, lr: 1.0e-3}}
eval: {{slices_per_scan: 20}}
""")
    yield p, name
    shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def test_sail_run_end_to_end_and_resume(smoke_config, tmp_path):
    cfg, name = smoke_config
    r = _run('run', str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [n for n, _ in find_steps()]
    assert steps == ['02_demo', '03_slices', '04_split', '06_embed', '08_train', '09_codes', '10_probes', '11_monosemanticity', '12_ranking']
    for step in steps: assert f'{step}: done in' in r.stdout
    run = ROOT/'runs'/name
    m = json.loads((run/'manifest.json').read_text())
    assert [m['steps'][s]['status'] for s in steps] == ['done'] * len(steps)
    emb, rows = load_embeddings(tmp_path/'data', 'pixels')
    assert emb.shape == (m['steps']['03_slices']['summary']['n_slices'], 1024)
    assert m['steps']['08_train']['summary'] == {'configs': 4, 'encoders': ['pixels'], 'variants': ['paper', 'released']}
    for v in ['paper', 'released']:
        for c in ['D_8_32_K_2_4', 'D_8_32_K_4_8']:
            assert (run/'sae'/'pixels'/v/c/'model.safetensors').exists()
            side = json.loads((run/'codes'/'pixels'/v/c/'codes.json').read_text())
            assert sum(x['rows'] for x in side['splits'].values()) == emb.shape[0]
    scores = pd.read_csv(run/'results'/'monosemanticity'/'config_scores.csv')
    assert len(scores) == 4 and set(scores.variant) == {'paper', 'released'} and (scores.slices_per_scan == 20).all()
    probes = pd.read_csv(run/'results'/'probes'/'summary.csv')
    assert len(probes) == 4 and probes.dense_val_auc.notna().all()
    ranking = pd.read_csv(run/'results'/'ranking.csv')
    assert sorted(ranking.groupby('variant').final_rank.min()) == [1.0, 1.0]
    assert len(pd.read_csv(run/'results'/'headline.csv')) == 2
    assert m['steps']['03_slices']['summary']['n_slices'] > 0 and 'numpy' in m['versions']
    assert m['steps']['03_slices']['outputs']['slices.parquet'] == str(tmp_path/'data'/'slices.parquet')
    for step in steps:
        nb = nbformat.read(run/'notebooks'/f'{step}.ipynb', as_version=4)
        assert any('injected-parameters' in c.metadata.get('tags', []) for c in nb.cells)
    slices = pd.read_parquet(tmp_path/'data'/'slices.parquet')
    split = pd.read_csv(tmp_path/'data'/'split.csv')
    assert set(zip(split.modality, split.image_id)) == set(zip(slices.modality, slices.image_id))
    assert (tmp_path/'data'/slices.image_path.iloc[0]).exists()
    r2 = _run('run', str(cfg))                                              # everything is done: all skipped
    assert r2.returncode == 0 and r2.stdout.count('done earlier, skipped') == len(steps), r2.stdout
    r3 = _run('run', str(cfg), '--steps', 'split', '--force')               # a forced single step reruns, same split
    assert r3.returncode == 0 and '04_split: done in' in r3.stdout
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path/'data'/'split.csv'), split)

def test_failing_step_names_notebook_and_cell(tmp_path):
    (tmp_path/'TotalSegmentator').mkdir()                                   # exists, but holds no dataset folders
    name = f'_pytest_pipeline_fail_{tmp_path.name}'
    cfg = tmp_path/'broken.yaml'
    cfg.write_text(f"name: {name}\ndata: {{totalseg_root: {tmp_path}/TotalSegmentator, dir: {tmp_path}/data}}\n")
    try:
        r = _run('run', str(cfg), '--steps', 'demo', 'slices', 'split')
        assert r.returncode == 1
        assert 'step 03_slices failed in cell' in r.stderr and 'DataFormatError' in r.stderr and 'CT_Dataset_v201' in r.stderr
        kept = ROOT/'runs'/name/'notebooks'/'03_slices.ipynb'
        assert kept.exists() and str(kept) in r.stderr
        m = json.loads((ROOT/'runs'/name/'manifest.json').read_text())
        assert m['steps']['02_demo']['status'] == 'done' and m['steps']['03_slices']['status'] == 'failed'
        assert '04_split' not in m['steps']                                 # stopped at the failure
    finally: shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def test_cli_reports_bad_config(tmp_path):
    (tmp_path/'bad.yaml').write_text("name: x\nsplit: {seed: forty-two}\n")
    r = _run('run', str(tmp_path/'bad.yaml'))
    assert r.returncode == 1 and "'split.seed' must be int" in r.stderr
    r = _run('run', 'smoke', '--steps', 'slicse')
    assert r.returncode == 1 and 'unknown step' in r.stderr
