"A slicing run killed part-way resumes and writes exactly the table of an uninterrupted run."
import os, sys, time, signal, shutil, subprocess, textwrap
from pathlib import Path
import pandas as pd, pytest
from sail.core import load_config
from sail.slices import slice_dataset

def _many_scans(mini, dst, n=10):
    "A CT dataset of n copies of the fixture scan (distinct ids and metadata)."
    ds = dst/'CT_Dataset_v201'; ds.mkdir(parents=True)
    header, row = (mini/'CT_Dataset_v201'/'meta.csv').read_text().strip().splitlines()
    lines = [header]
    for i in range(n):
        shutil.copytree(mini/'CT_Dataset_v201'/'s0000', ds/f's{i:04d}')
        lines.append(row.replace('s0000', f's{i:04d}').replace(';62;', f';{30 + 5*i};'))
    (ds/'meta.csv').write_text('\n'.join(lines) + '\n')
    return dst

def _config(tmp_path, root, out, workers):
    p = tmp_path/f'{out.name}.yaml'
    p.write_text(f"name: _pytest_resume_{out.name}\nworkers: {workers}\ndata: {{totalseg_root: {root}, dir: {out}, modalities: [ct]}}\n")
    return p

def test_killed_run_resumes_to_identical_table(mini, tmp_path):
    root = _many_scans(mini, tmp_path/'TotalSegmentator')
    ref_cfg = load_config(_config(tmp_path, root, tmp_path/'uninterrupted', 2))
    slice_dataset(ref_cfg)
    killed = tmp_path/'killed'
    cfg_path = _config(tmp_path, root, killed, 1)
    code = f"from sail.core import load_config; from sail.slices import slice_dataset; slice_dataset(load_config({str(cfg_path)!r}))"
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = killed/'.slices-parts'
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob('*.json'))) < 4: time.sleep(0.02)   # settings.json + 3 scans
    proc.send_signal(signal.SIGKILL); proc.wait()
    n_done = len(list(parts.glob('ct_*.json')))
    assert 0 < n_done < 10, n_done
    assert not (killed/'slices.parquet').exists()                          # nothing half-finished is published
    summary = slice_dataset(load_config(cfg_path))                          # resume
    assert summary['n_sliced'] == 10
    a = pd.read_parquet(tmp_path/'uninterrupted'/'slices.parquet')
    b = pd.read_parquet(killed/'slices.parquet')
    pd.testing.assert_frame_equal(a, b)
    for rel in b.image_path[::97]:
        assert (killed/rel).read_bytes() == (tmp_path/'uninterrupted'/rel).read_bytes()

def test_stop_early_then_resume(mini, tmp_path):
    "max_scans stops after k new scans; the next call finishes the rest (the pipeline's resume path)."
    root = _many_scans(mini, tmp_path/'TotalSegmentator', n=4)
    cfg = load_config(_config(tmp_path, root, tmp_path/'staged', 1))
    assert slice_dataset(cfg, max_scans=2) == {'stopped_early': True, 'n_sliced': 2}
    s = slice_dataset(cfg)
    assert (s['n_sliced'], s['n_failed']) == (4, 0)
