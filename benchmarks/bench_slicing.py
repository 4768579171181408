"""Slicing benchmark: slices/s and organ-flag cost of SAIL's slicer against the reference's approach, measured in one run.

Baseline (reference, spec §2.2 step 7 and §17.5 item 37): every mask read with `get_fdata()` as float64, one file at a
time, then organ presence checked slice by slice inside the square crop; images upsampled to 1024x1024 RGB with
LANCZOS and saved as PNG. SAIL: masks read as stored uint8 through `dataobj`, presence for all slices of a plane in
one `any`, native-resolution grayscale PNGs. Results go to benchmarks/results/bench_slicing.{json,md} and, with
--readme, between the README's bench-slicing markers. `--config smoke` (20 demo scans, already sliced by the smoke
run) is the CPU-sized mode.

    python benchmarks/bench_slicing.py [--config demo] [--scans 12] [--reference-scans 4] [--readme]
"""
import argparse, sys, time, tempfile, shutil
from pathlib import Path
import numpy as np, nibabel as nib
from scipy import ndimage
from PIL import Image
from sail.core import run_paths
from sail.config import load_config
from sail.totalseg import (slice_scan, read_mask, organ_presence, load_canonical, read_image, IMAGE_FILES, ORGANS, ct_window,
                           window_to_uint8, mri_to_uint8)
from sail.slices import list_scans
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

def render(r:dict)->str:
    "The README's table for this benchmark, from its JSON."
    ref_rate, sail_rate = r['reference_slices'] / r['reference_slice_s'], r['sail_slices'] / r['sail_slice_s']
    return '\n'.join([
        '| measure | reference approach | SAIL | ratio |', '|---|---|---|---|',
        f"| organ flags for {r['scans']} scans ({r['masks']:,} masks) | {r['reference_flags_s']:.1f} s (float64 masks, "
        f"a crop and `any` per slice) | {r['sail_flags_s']:.2f} s (uint8 `dataobj`, one `any` per plane) | "
        f"×{r['reference_flags_s'] / r['sail_flags_s']:.1f} |",
        f"| slicing throughput | {ref_rate:.1f} slices/s (1024² RGB LANCZOS PNGs, {r['reference_scans']} scans) | "
        f"{sail_rate:.0f} slices/s (native grayscale PNGs, {r['scans']} scans) | ×{sail_rate / ref_rate:.1f} |",
        '', f"Both on `{r['config']}`'s demo scans in the same run. {where(r)}."])

def reference_presence(scan_dir, modality, shape_hint=None):
    "The reference's organ flags: float64 masks, a crop and an `any` per slice per mask per plane."
    img = nib.load(str(scan_dir/IMAGE_FILES[modality])).get_fdata()
    axes = range(3) if modality == 'ct' else [int(np.argmin(img.shape))]
    flags = {}
    for f in sorted((scan_dir/'segmentations').glob('*.nii.gz')):
        m = nib.load(str(f)).get_fdata()
        if m.shape != img.shape: m = ndimage.zoom(m, [a/b for a, b in zip(img.shape, m.shape)], order=0)
        m = m.astype(bool)
        for a in axes:
            for i in range(img.shape[a]):
                s = np.take(m, i, axis=a); side = min(s.shape); r0, c0 = (s.shape[0]-side)//2, (s.shape[1]-side)//2
                flags[(f.name, a, i)] = bool(s[r0:r0+side, c0:c0+side].any())
    return img, axes, flags

def reference_slice(scan_dir, modality, study_type, out):
    "The reference's whole per-scan path: flags as above plus 1024x1024 RGB LANCZOS PNGs of every slice."
    img, axes, flags = reference_presence(scan_dir, modality)
    if modality == 'ct':
        c, w, _ = ct_window(study_type); u8 = window_to_uint8(img, c, w)
    else: u8 = mri_to_uint8(img)[0]
    n = 0
    for a in axes:
        for i in range(img.shape[a]):
            s = np.take(u8, i, axis=a); side = min(s.shape); r0, c0 = (s.shape[0]-side)//2, (s.shape[1]-side)//2
            im = Image.fromarray(s[r0:r0+side, c0:c0+side]).convert('RGB').resize((1024, 1024), Image.LANCZOS).rotate(90, expand=True)
            im.save(out/f'{a}_{i:04d}.png'); n += 1
    return n

def sail_presence(scan_dir, modality):
    "SAIL's organ flags: uint8 masks through dataobj, one `any` per plane."
    vol, zooms, codes, aff = read_image(scan_dir/IMAGE_FILES[modality])
    axes = (0, 1, 2) if modality == 'ct' else (int(np.argmin(vol.shape)),)
    return [organ_presence(read_mask(f, vol.shape, aff)[0], axes) for f in sorted((scan_dir/'segmentations').glob('*.nii.gz'))]

def timed(fn, *a):
    t = time.perf_counter(); out = fn(*a); return out, time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', default='demo'); ap.add_argument('--scans', type=int, default=12)
    ap.add_argument('--reference-scans', type=int, default=4); ap.add_argument('--readme', action='store_true')
    args = ap.parse_args()
    cfg = load_config(args.config)
    root = run_paths(cfg).totalseg
    if cfg.demo is not None and not (root/'demo.json').exists():
        from sail.demo import build_demo
        build_demo(root, cfg.demo, workers=cfg.workers)
    scans = list_scans(root, cfg.data.modalities)
    scans = scans[scans.image_found]                 # a listed scan without its image is a failure, not work
    g = np.random.default_rng(0)
    pick = scans.iloc[np.sort(g.choice(len(scans), min(args.scans, len(scans)), replace=False))]
    out = Path(tempfile.mkdtemp())
    try:
        t_ref_flags = t_sail_flags = 0.0; n_masks = 0
        for r in pick.itertuples():
            d = Path(r.scan_dir)
            _, t = timed(reference_presence, d, r.modality); t_ref_flags += t
            fl, t = timed(sail_presence, d, r.modality); t_sail_flags += t; n_masks += len(fl)
        n_sail = 0; t_sail = 0.0
        for r in pick.itertuples():
            (rows, _), t = timed(slice_scan, r.scan_dir, r.modality, out/'sail', r.study_type); n_sail += len(rows); t_sail += t
        n_ref = 0; t_ref = 0.0
        for r in pick.head(args.reference_scans).itertuples():
            o = out/'ref'/f'{r.modality}_{r.image_id}'; o.mkdir(parents=True)
            n, t = timed(reference_slice, Path(r.scan_dir), r.modality, r.study_type, o); n_ref += n; t_ref += t
        print(f"dataset: {root} ({len(scans)} scans; {len(pick)} timed, {n_masks} masks)")
    finally: shutil.rmtree(out)
    res = dict(config=args.config, scans=len(pick), masks=n_masks, reference_scans=min(args.reference_scans, len(pick)),
               reference_flags_s=t_ref_flags, sail_flags_s=t_sail_flags, reference_slices=n_ref,
               reference_slice_s=t_ref, sail_slices=n_sail, sail_slice_s=t_sail)
    publish('bench_slicing', res, render, args.readme)

if __name__ == '__main__': main()
