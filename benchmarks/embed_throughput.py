"""Embedding throughput: SAIL's batched extractor against a batch-size-1 loop on the same model and images, same run.

CPU (always): a small DINOv3-architecture model with random weights (`arch: tiny`) on demo slices.
GPU (when CUDA is available): a DINOv3 ViT-L/16-shaped model (random weights) at 1024x1024 in bf16 — images/s and
peak GPU memory — the paper's setting without needing the gated weights. Results go to
benchmarks/results/embed_throughput.{json,md} and, with --readme, between the README's embed-throughput markers.
`--config smoke` (the smoke run's slices) is the CPU-sized mode where the demo has not been sliced.

    python benchmarks/embed_throughput.py [--config demo] [--n 512] [--image-size 112] [--readme]
"""
import argparse, os, sys, time, tempfile, shutil
from pathlib import Path
import numpy as np, torch, pandas as pd
from PIL import Image
from sail.core import run_paths, pick_device
from sail.config import load_config, EncoderConfig
from sail.encoders import build_encoder
from sail.slices import load_slices
from sail.embed import SliceImages
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

def render(r:dict)->str:
    "The README's table for this benchmark, from its JSON."
    one, bat = r['n'] / r['loop_s'], r['n'] / r['batched_s']
    same = 'identical outputs' if r['max_abs_diff'] == 0 else f"outputs within {r['max_abs_diff']:.0e}"
    rows = ['| measure | baseline | SAIL | ratio |', '|---|---|---|---|',
            f"| embedding {r['n']} `{r['config']}` slices, tiny random DINOv3 at {r['image_size']}² | {one:.0f} "
            f"images/s (batch-size-1 loop) | {bat:.0f} images/s (batch {r['batch_size']}, {r['workers']} loader "
            f"workers) | "
            f"×{bat / one:.1f}, {same} |"]
    rows += [f"| DINOv3 ViT-L/16 shape at 1024², bf16, batch {g['batch']} | | {g['images_per_s']:.1f} images/s, peak "
             f"{g['peak_gib']:.1f} GiB | |" for g in r.get('gpu', [])]
    return '\n'.join(rows + ['', f"Both on the same model and slices in the same run, torch {r['torch']}. {where(r)}."])

def batched(enc, root, paths, batch_size, workers, device, bf16):
    ds = SliceImages(root, paths, enc.preparer, enc.image_size)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.startswith('cuda'))
    out = []
    with torch.inference_mode():
        for _, x, _ in dl:
            with torch.autocast(device.split(':')[0], dtype=torch.bfloat16, enabled=bf16):
                out.append(enc(x.to(device)).float().cpu())
    return torch.cat(out)

def one_by_one(enc, root, paths, device, bf16):
    "The reference-style loop: open, prepare and embed one image at a time."
    out = []
    with torch.inference_mode():
        for p in paths:
            x = enc.prepare(np.asarray(Image.open(root/p).convert('L')))[None].to(device)
            with torch.autocast(device.split(':')[0], dtype=torch.bfloat16, enabled=bf16):
                out.append(enc(x).float().cpu())
    return torch.cat(out)

def timed(fn, *a):
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t = time.perf_counter(); r = fn(*a)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return r, time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', default='demo'); ap.add_argument('--n', type=int, default=512)
    ap.add_argument('--image-size', type=int, default=112); ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--readme', action='store_true')
    args = ap.parse_args()
    cfg = load_config(args.config); root = run_paths(cfg).data
    paths = load_slices(root, ['image_path']).image_path.sample(args.n, random_state=0).tolist()
    device = pick_device(cfg.device); bf16 = device.startswith('cuda')
    workers = min(os.cpu_count() or 1, 8)
    enc = build_encoder(EncoderConfig('random:dinov3', arch='tiny', image_size=args.image_size)).to(device)
    batched(enc, root, paths[:args.batch_size], args.batch_size, 0, device, bf16)             # warm-up
    a, tb = timed(batched, enc, root, paths, args.batch_size, workers, device, bf16)
    b, t1 = timed(one_by_one, enc, root, paths, device, bf16)
    res = dict(config=args.config, n=args.n, image_size=args.image_size, batch_size=args.batch_size, workers=workers,
               device=device, torch=torch.__version__, loop_s=t1, batched_s=tb,
               max_abs_diff=float((a - b).abs().max()), gpu=[])
    if torch.cuda.is_available():
        big = build_encoder(EncoderConfig('random:dinov3', arch='vitl16', image_size=1024)).to(device)
        torch.cuda.reset_peak_memory_stats()
        for bs in (8, 32):
            x = torch.randint(0, 256, (bs, 1024, 1024), dtype=torch.uint8, device=device)
            with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):
                big(x); torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(5): big(x)
                torch.cuda.synchronize()
            res['gpu'].append(dict(batch=bs, images_per_s=5 * bs / (time.perf_counter() - t),
                                   peak_gib=torch.cuda.max_memory_allocated() / 2**30))
    publish('embed_throughput', res, render, args.readme)

if __name__ == '__main__': main()
