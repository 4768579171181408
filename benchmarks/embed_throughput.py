"""Embedding throughput: SAIL's batched extractor against a batch-size-1 loop on the same model and images, same run.

CPU (always): a small DINOv3-architecture model with random weights (`arch: tiny`) on demo slices.
GPU (when CUDA is available): a DINOv3 ViT-L/16-shaped model (random weights) at 1024x1024 in bf16 — images/s and
peak GPU memory — the paper's setting without needing the gated weights.

    python benchmarks/embed_throughput.py [--config demo] [--n 512] [--image-size 112]
"""
import argparse, os, time, tempfile, shutil
from pathlib import Path
import numpy as np, torch, pandas as pd
from PIL import Image
from sail.core import run_paths, pick_device
from sail.config import load_config, EncoderConfig
from sail.encoders import build_encoder
from sail.slices import load_slices
from sail.embed import SliceImages

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
    args = ap.parse_args()
    cfg = load_config(args.config); root = run_paths(cfg).data
    paths = load_slices(root, ['image_path']).image_path.sample(args.n, random_state=0).tolist()
    device = pick_device(cfg.device); bf16 = device.startswith('cuda')
    workers = min(os.cpu_count() or 1, 8)
    enc = build_encoder(EncoderConfig('random:dinov3', arch='tiny', image_size=args.image_size)).to(device)
    batched(enc, root, paths[:args.batch_size], args.batch_size, 0, device, bf16)             # warm-up
    a, tb = timed(batched, enc, root, paths, args.batch_size, workers, device, bf16)
    b, t1 = timed(one_by_one, enc, root, paths, device, bf16)
    print(f"machine: {os.cpu_count()} CPU cores, device {device}, torch {torch.__version__}")
    print(f"model: DINOv3 architecture 'tiny' (random weights), {args.image_size}px, {args.n} demo slices")
    print(f"batch-size-1 loop:                 {args.n/t1:8.1f} images/s")
    print(f"batched extractor (bs {args.batch_size}, {workers} workers): {args.n/tb:8.1f} images/s   ratio x{t1/tb:.1f}")
    print(f"max |difference| between the two:  {(a - b).abs().max().item():.2e}")
    if torch.cuda.is_available():
        from transformers import AutoModel
        big = build_encoder(EncoderConfig('random:dinov3', arch='vitl16', image_size=1024)).to(device)
        torch.cuda.reset_peak_memory_stats()
        for bs in (8, 32):
            x = torch.randint(0, 256, (bs, 1024, 1024), dtype=torch.uint8, device=device)
            with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):
                big(x); torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(5): big(x)
                torch.cuda.synchronize()
            print(f"GPU {torch.cuda.get_device_name()}: DINOv3 ViT-L/16 shape, 1024^2, bf16, batch {bs}: "
                  f"{5*bs/(time.perf_counter()-t):.1f} images/s, peak memory {torch.cuda.max_memory_allocated()/2**30:.1f} GiB")

if __name__ == '__main__': main()
