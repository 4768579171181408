"A slicing run killed part-way resumes and writes exactly the table of an uninterrupted run."
import os, sys, time, signal, shutil, subprocess, textwrap
from pathlib import Path
import pandas as pd, pytest
from conftest import kill_at
from sail.config import load_config
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
    slice_dataset(ref_cfg.paths, ref_cfg.data, ref_cfg.slices, ref_cfg.compute)
    killed = tmp_path/'killed'
    cfg_path = _config(tmp_path, root, killed, 1)
    code = f"from sail.config import load_config; from sail.slices import slice_dataset; c = load_config({str(cfg_path)!r}); slice_dataset(c.paths, c.data, c.slices, c.compute)"
    kill_at(code, 'slices:scan', 3)                                          # killed right after the third scan
    n_done = len(list((killed/'.slices-parts').glob('ct_*.json')))
    assert n_done == 3, n_done
    assert not (killed/'slices.parquet').exists()                          # nothing half-finished is published
    c = load_config(cfg_path); summary = slice_dataset(c.paths, c.data, c.slices, c.compute)   # resume
    assert summary.n_sliced == 10
    a = pd.read_parquet(tmp_path/'uninterrupted'/'slices.parquet')
    b = pd.read_parquet(killed/'slices.parquet')
    pd.testing.assert_frame_equal(a, b)
    for rel in b.image_path[::97]:
        assert (killed/rel).read_bytes() == (tmp_path/'uninterrupted'/rel).read_bytes()

def test_stop_early_then_resume(mini, tmp_path):
    "max_scans stops after k new scans; the next call finishes the rest (the pipeline's resume path)."
    root = _many_scans(mini, tmp_path/'TotalSegmentator', n=4)
    cfg = load_config(_config(tmp_path, root, tmp_path/'staged', 1))
    r = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute, max_scans=2)
    assert (r.stopped_early, r.n_sliced) == (True, 2)
    s = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (s.n_sliced, s.n_failed) == (4, 0)

def test_rerun_reslices_exactly_what_changed(mini, tmp_path):
    "A new scan, a fixed failed scan, a changed mask, a deleted PNG, a vanished scan: each rerun re-slices only that scan."
    root = _many_scans(mini, tmp_path/'TotalSegmentator', n=4)
    ds = root/'CT_Dataset_v201'
    (ds/'s0003'/'ct.nii.gz').write_bytes(b'broken')                         # s0003 fails
    cfg = load_config(_config(tmp_path, root, tmp_path/'out', 1))
    s = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (s.n_sliced, s.n_failed, s.sliced_now) == (3, 1, ['ct/s0000', 'ct/s0001', 'ct/s0002', 'ct/s0003'])
    stamp = lambda sid: (tmp_path/'out'/'images'/'ct'/sid).stat().st_mtime_ns
    before = {i: stamp(f's000{i}') for i in range(3)}
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0003']                   # only the failed scan is retried
    shutil.copy(mini/'CT_Dataset_v201'/'s0000'/'ct.nii.gz', ds/'s0003'/'ct.nii.gz')   # fixed
    s = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (s.sliced_now, s.n_failed, s.n_sliced) == (['ct/s0003'], 0, 4)
    shutil.copytree(ds/'s0000', ds/'s0004')                                  # a new scan added to meta.csv
    (ds/'meta.csv').write_text((ds/'meta.csv').read_text() + (ds/'meta.csv').read_text().splitlines()[1].replace('s0000', 's0004') + '\n')
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0004']
    os.utime(ds/'s0001'/'segmentations'/'liver.nii.gz', ns=(1, 1))           # an input file changed (stamp)
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0001']
    png = sorted((tmp_path/'out'/'images'/'ct'/'s0002').glob('*.png'))[0]; png.unlink()   # an output went missing
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0002']
    assert {i: stamp(f's000{i}') for i in [0]} == {0: before[0]}              # untouched throughout
    (ds/'meta.csv').write_text('\n'.join(l for l in (ds/'meta.csv').read_text().splitlines() if not l.startswith('s0004')) + '\n')
    shutil.rmtree(ds/'s0004')                                                # the scan vanished
    s = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (s.removed, s.sliced_now, s.n_scans) == (['ct/s0004'], [], 4)
    assert not (tmp_path/'out'/'images'/'ct'/'s0004').exists()
    t = pd.read_parquet(tmp_path/'out'/'slices.parquet')
    assert sorted(t.image_id.unique()) == ['s0000', 's0001', 's0002', 's0003']
    shutil.rmtree(tmp_path/'out')                                            # the processed data deleted: everything again
    assert len(slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now) == 4
