"""BiomedParse's backbone on the CPU: images/s of the full-size FocalNet (EMBED_DIM 192, DEPTHS [2, 2, 18, 2], the
spec §3.3 random-weight baseline, so no gated download is needed) at the paper's 1024² and at a smaller side, one image
at a time, against EfficientNet-Lite0 (sail.backbones, random twin) on the same inputs in the same run.

Each size measures up to `--n` images but stops after `--budget-s` seconds once one image is done, so the run stays
within a few minutes even on a busy two-core machine. Results go to benchmarks/results/focalnet_speed.{json,md}.

    python benchmarks/focalnet_speed.py [--n 2] [--sizes 1024 224] [--budget-s 60] [--threads 1]
"""
import argparse, sys, time
from pathlib import Path
import torch
from sail.focalnet import FOCALNET_LARGE, biomedparse_embedding, biomedparse_preprocess, random_focalnet
from sail.backbones import effnet_preprocess, load_efficientnet_lite0
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where


def render(r:dict)->str:
    "The Markdown table of this benchmark, from its JSON."
    rows = ['| input | FocalNet-L (BiomedParse backbone) | EfficientNet-Lite0 (baseline) | ratio |', '|---|---|---|---|']
    for s in r['sizes']:
        f, b = s['focalnet'], s['baseline']
        rows.append(f"| {s['size']}² | {f['images_per_s']:.3f} images/s ({f['s_per_image']:.1f} s/image, "
                    f"n = {f['n']}) | {b['images_per_s']:.2f} images/s (n = {b['n']}) | "
                    f"FocalNet ×{b['images_per_s'] / f['images_per_s']:.0f} slower |")
    return '\n'.join(rows + ['', f"Batch 1, float32, torch {r['torch']} with {r['threads']} threads; FocalNet "
                             f"{r['focalnet_params']:,} parameters, embedding {r['embedding_dim']}-d; building the "
                             f"random-weight model took {r['build_s']:.1f} s. {where(r)}."])


def measure(fn, images:list, budget_s:float)->dict:
    "Time `fn` on each image in turn; stop after `budget_s` seconds once at least one is done."
    times = []
    with torch.inference_mode():
        for x in images:
            t = time.perf_counter(); fn(x); times.append(time.perf_counter() - t)
            if sum(times) > budget_s: break
    return dict(n=len(times), seconds=[round(t, 3) for t in times], s_per_image=sum(times) / len(times),
                images_per_s=len(times) / sum(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=2, help='images per size (at most)')
    ap.add_argument('--sizes', type=int, nargs='+', default=[1024, 224], help='input sides')
    ap.add_argument('--budget-s', type=float, default=60, help='stop a size after this many seconds')
    ap.add_argument('--threads', type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)   # on a shared, busy machine one thread avoids OpenMP barrier stalls
    t = time.perf_counter(); focal = random_focalnet(42, *FOCALNET_LARGE); build_s = time.perf_counter() - t
    effnet = load_efficientnet_lite0(pretrained=False)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():   # warm-up at a tiny side: the first call pays for allocations, not for the size
        warm = torch.zeros(1, 64, 64, dtype=torch.uint8)
        biomedparse_embedding(focal, biomedparse_preprocess(warm, 64)); effnet.features(effnet_preprocess(warm))
    sizes = []
    for size in a.sizes:
        slices = [torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=g) for _ in range(a.n)]
        f = measure(lambda s: biomedparse_embedding(focal, biomedparse_preprocess(s, size)), slices, a.budget_s)
        b = measure(lambda s: effnet.features(effnet_preprocess(s)), slices, a.budget_s)
        sizes.append(dict(size=size, focalnet=f, baseline=b | dict(model='EfficientNet-Lite0 (random twin)')))
        print(f"{size}²: FocalNet {f['s_per_image']:.1f} s/image, EfficientNet-Lite0 {b['s_per_image']:.3f} s/image",
              flush=True)
    dim = biomedparse_embedding(focal, biomedparse_preprocess(slices[0][:, :64, :64], 64)).shape[1]
    res = dict(sizes=sizes, build_s=round(build_s, 2), threads=torch.get_num_threads(), torch=torch.__version__,
               focalnet_params=sum(p.numel() for p in focal.parameters()), embedding_dim=dim,
               model=f'FocalNet(embed_dim={FOCALNET_LARGE.embed_dim}, depths={list(FOCALNET_LARGE.depths)}), '
                     'random weights (spec §3.3, seed 42)')
    publish('focalnet_speed', res, render)


if __name__ == '__main__':
    main()
