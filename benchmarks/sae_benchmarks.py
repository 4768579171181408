"""SAE benchmarks, every baseline measured in the same run on the same data.

1. training samples/s of one config at the paper's shape (d 1536, sizes 128..8192, k 20..160) against the reference's
   data path and model (per-item normalisation, Python collation of 2048-item batches, per-level torch.topk and dense
   decode of zero-padded codes, detached tied decoder);
2. a batched family of 8 configs against training the same 8 one after another (same code, M = 8 vs 8 x M = 1);
3. codes rows/s: SAIL's batched inference against the reference's batch-size-1 loop (eval forward of every level with
   dense reconstructions, dense row to bytes);
4. bytes per row: sparse codes (indices + values) against the reference's dense float32 rows, both as Parquet;
5. bf16 autocast training on the CPU (`sae.dtype: bfloat16`) against fp32, same data, seeds and steps: samples/s of
   both and the validation R² each reaches (the goal: >= 1.5x with R² within 0.01);
6. the training step against its floor (issue 30): two dense fp32 GEMMs of the encoder's shape per step (the forward
   (B, d) x (d, D) and the weight gradient (D, B) x (B, d)), timed here, alternating round by round with SAIL's whole
   training step (forward, backward, decoder projection, clipping, Adam, decoder normalisation) at 2 torch threads,
   over at least 10 rounds; the goal is SAIL at >= 90 % of the floor's samples/s, for `paper` and `released`.

Results go to benchmarks/results/sae_benchmarks.{json,md} and, with --readme, between the README's sae-benchmarks
markers (an `--only` run replaces the sections it ran in the stored JSON, keeps the others, and never writes the
README; section 6 records its own shape and date). `--quick` is the CPU-sized mode (d 256, sizes 32…256:
seconds instead of minutes); its block says so in its shape line.

    python benchmarks/sae_benchmarks.py [--steps 3] [--quick] [--readme]
"""
import argparse, sys, time, io, os
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F, pyarrow as pa, pyarrow.parquet as pq
from sail.config import SAEConfig
from sail.sae import MatryoshkaSAE, train_forward, project_decoder_grad, normalize_decoder, VARIANTS
from sail.core import autocast
from sail.train import clip_per_model_, lr_factor, evaluate
from sail.codes import compute_codes, codes_table
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where, load, stamp, RESULTS

GOALS = dict(training=3, family=4, codes=50, storage=20)   # issue goals: the least ratio against each baseline
FLOOR_GOAL = 0.9   # issue 30: SAIL's training step at >= 90 % of the two-GEMM floor

def render(r:dict)->str:
    "The README's table for this benchmark, from its JSON (the sections that ran)."
    def goal(key, x):
        if r.get('quick'): return f"×{x:.1f}"                     # the goals are set at the paper's shape
        kind, met = 'goal' if key != 'family' else 'GPU goal', '' if x >= GOALS[key] else ', not met'
        return f"×{x:.1f} ({kind} ≥{GOALS[key]}{met})"
    rows = ['| measure | baseline (reference approach) | SAIL | ratio |', '|---|---|---|---|']
    if 'training' in r:
        t = r['training']
        rows.append(f"| training, one configuration | {t['reference']:,.0f} samples/s (per-item normalisation, "
                    f"Python collation, per-level `topk`, dense decode of padded codes) | {t['sail']:,.0f} samples/s "
                    f"(resident data, sampled-threshold BatchTopK, sparse decode and sparse encoder backward) | "
                    f"{goal('training', t['sail'] / t['reference'])} |")
    for f in r.get('family', []):
        rows.append(f"| a family of {f['members']} configurations, {f['shape']} | {f['one_by_one_s']:.1f} s one after "
                    f"another | {f['batched_s']:.1f} s as one batched model | "
                    f"{goal('family', f['one_by_one_s'] / f['batched_s'])} |")
    if 'codes' in r:
        c = r['codes']
        rows.append(f"| codes | {c['reference']:,.0f} rows/s (batch-size-1 loop, every level decoded, dense row to "
                    f"bytes) | {c['sail']:,.0f} rows/s (batches of 2,048, JumpReLU, sparse output) | "
                    f"{goal('codes', c['sail'] / c['reference'])} |")
    if 'storage' in r:
        b = r['storage']
        rows.append(f"| bytes per row of codes (mean L0 {b['l0']:.0f} of {r['sizes'][-1]:,}) | {b['raw']:,} raw dense "
                    f"float32 ({b['dense_parquet']:,.0f} after Parquet's snappy compresses the zeros) | "
                    f"{b['sparse_parquet']:,.0f} (indices + values in Parquet) | "
                    f"{goal('storage', b['raw'] / b['sparse_parquet'])} raw, "
                    f"×{b['dense_parquet'] / b['sparse_parquet']:.1f} against compressed dense |")
    if 'bf16' in r:
        h = r['bf16']
        rows.append(f"| training in bf16 autocast on the CPU ({h['steps']} steps) | fp32: {h['fp32']:,.0f} samples/s, "
                    f"validation R² {h['r2_fp32']:.4f} | bf16: {h['bf16']:,.0f} samples/s, validation R² "
                    f"{h['r2_bf16']:.4f} | ×{h['bf16'] / h['fp32']:.2f}, ΔR² {h['r2_bf16'] - h['r2_fp32']:+.4f} |")
    for f in r.get('floor', []):
        paper = (f['d'], f['sizes'][-1], f['batch']) == (1536, 8192, 2048)    # the goal is set at the paper's shape
        met = '' if f['ratio'] >= FLOOR_GOAL else ', not met'
        rows.append(f"| training step against its floor, `{f['variant']}`, d {f['d']}, D {f['sizes'][-1]:,}, k "
                    f"{f['ks'][0]}…{f['ks'][-1]}, batch {f['batch']:,} ({f['rounds']} alternating rounds, "
                    f"{f['threads']} threads, {f['when']}, load average {f['load_avg']:.1f}) | "
                    f"{f['floor']:,.0f} samples/s "
                    f"(two dense fp32 GEMMs of the encoder's "
                    f"shape: forward and weight gradient, {f['floor_ms']:.0f} ms) | {f['sail']:,.0f} samples/s "
                    f"({f['sail_ms']:.0f} ms a step) | {100 * f['ratio']:.0f} % of the floor"
                    f"{f' (goal ≥{100 * FLOOR_GOAL:.0f} %{met})' if paper else ''}; fastest rounds "
                    f"{min(f['floor_all_ms']):.0f} ms and {min(f['sail_all_ms']):.0f} ms: "
                    f"{100 * min(f['floor_all_ms']) / min(f['sail_all_ms']):.0f} % |")
    shape = (f"Shape: d {r['d']}, sizes {'…'.join(map(str, r['sizes'][::3]))}, k {'…'.join(map(str, r['ks'][::3]))}, "
             f"batch {r['batch']}, {r['steps']} timed steps per measure.")
    return '\n'.join(rows + ['', f"{shape} {where(r)}."])

class ReferenceSAE(torch.nn.Module):
    "The released model (spec §5.1-5.7): tied detached decoder, BatchTopK on raw z per level, dense decode of padded codes."
    def __init__(self, d, sizes, ks):
        super().__init__()
        self.sizes, self.ks = sizes, ks
        self.encoder = torch.nn.Linear(d, sizes[-1]); self.bias = torch.nn.Parameter(torch.zeros(d))
        torch.nn.init.xavier_uniform_(self.encoder.weight); torch.nn.init.zeros_(self.encoder.bias)
        with torch.no_grad(): self.encoder.weight /= self.encoder.weight.norm(dim=1, keepdim=True) + 1e-8
        self.register_buffer('theta', torch.tensor(0.05))
    def forward(self, x):
        z = self.encoder(x - self.bias); Wt = self.encoder.weight.data   # (D, d): decode = a @ W, detached
        outs = []
        for D, k in zip(self.sizes, self.ks):
            p = z[:, :D]; v, i = torch.topk(p.reshape(-1), k * x.shape[0])
            a = torch.zeros_like(p.reshape(-1)).scatter(0, i, v).reshape(p.shape)
            full = torch.zeros_like(z); full[:, :D] = a
            outs.append(full @ Wt + self.bias)
        return outs
    def infer(self, x):
        z = self.encoder(x - self.bias); Wt = self.encoder.weight.data; codes = []
        for D in self.sizes:
            a = (z[:, :D] - self.theta).clamp_min(0); full = torch.zeros_like(z); full[:, :D] = a
            codes.append(full); _ = full @ Wt + self.bias
        return codes[-1]

def reference_batches(E, B):
    "The reference's data path: one fixed order, per-item L2 normalisation, Python collation."
    order = np.random.default_rng(42).permutation(len(E))
    for s in range(0, len(E), B):
        yield torch.stack([F.normalize(torch.from_numpy(E[i]), dim=0) for i in order[s:s + B]])

def time_reference_training(E, d, sizes, ks, B, steps):
    m = ReferenceSAE(d, sizes, ks); opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    it = reference_batches(E, B); n = 0; t = None
    for step in range(steps + 1):
        if step == 1: t = time.perf_counter()
        x = next(it)
        loss = torch.stack([F.mse_loss(o, x) for o in m(x)]).mean(); loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5); opt.step(); opt.zero_grad()
        if step >= 1: n += len(x)
    return n / (time.perf_counter() - t)

def time_sail_training(X, d, sizes, ks_list, B, steps, seeds=None, dtype='float32', lr=1e-4, model=False):
    sae = MatryoshkaSAE(d, sizes, ks_list, seeds=seeds or [42 + i for i in range(len(ks_list))]).train()
    opt = torch.optim.Adam(sae.parameters(), lr=lr, fused=True)          # as sail.train.train_family on the CPU
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0)); n = 0; t = None
    for step in range(steps + 1):
        if step == 1: t = time.perf_counter()
        xb = X[perm[(step * B) % len(X):(step * B) % len(X) + B]]
        with autocast('cpu', dtype): out = train_forward(sae, xb)
        out['loss'].backward()
        project_decoder_grad(sae); clip_per_model_(sae, 0.5); opt.step(); opt.zero_grad(set_to_none=True); normalize_decoder(sae)
        if step >= 1: n += len(xb)
    rate = n / (time.perf_counter() - t)
    return (rate, sae.eval()) if model else rate

def floor_and_training(X, d, sizes, ks, B, rounds, variant='paper', threads=2):
    "Medians over `rounds` of the two-GEMM floor and of SAIL's training step, timed alternately (same load for both)."
    before = torch.get_num_threads(); torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    A, Wt = torch.randn(B, d, generator=g), torch.randn(sizes[-1], d, generator=g)
    Gz = torch.randn(B, sizes[-1], generator=g)
    sae = MatryoshkaSAE(d, sizes, [ks], variant=variant, seeds=[42]).train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    def floor(): A @ Wt.T; Gz.T @ A                                  # forward GEMM, weight-gradient GEMM
    def step(i):
        xb = X[perm[(i * B) % len(X):(i * B) % len(X) + B]]
        train_forward(sae, xb)['loss'].backward()
        project_decoder_grad(sae); clip_per_model_(sae, 0.5)
        opt.step(); opt.zero_grad(set_to_none=True); normalize_decoder(sae)
    floor(); step(0)                                                 # warm-up
    load_before = os.getloadavg()[0]
    tf, ts = [], []
    for i in range(rounds):
        t = time.perf_counter(); floor(); tf.append(time.perf_counter() - t)
        t = time.perf_counter(); step(i + 1); ts.append(time.perf_counter() - t)
    torch.set_num_threads(before)
    f, s, load = float(np.median(tf)), float(np.median(ts)), (load_before + os.getloadavg()[0]) / 2
    return dict(variant=variant, d=d, sizes=list(sizes), ks=list(ks), batch=B,
                when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), load_avg=load,
                rounds=rounds, threads=threads, floor=B / f, sail=B / s, ratio=f / s, floor_ms=1e3 * f, sail_ms=1e3 * s,
                floor_all_ms=[1e3 * t for t in tf], sail_all_ms=[1e3 * t for t in ts])

def structured_embeddings(n, d, atoms=16384, k=24, seed=0):
    "Sparse non-negative combinations of a hidden unit-norm dictionary plus noise, L2-normalised (something to learn)."
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(atoms, d, generator=g), dim=1)
    idx = torch.randint(0, atoms, (n, k), generator=g)
    X = torch.einsum('nk,nkd->nd', torch.rand(n, k, generator=g), dictionary[idx]) + 0.02 * torch.randn(n, d, generator=g)
    return F.normalize(X, dim=1)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', type=int, default=3); ap.add_argument('--quick', action='store_true', help='smaller shapes, for a smoke run')
    ap.add_argument('--only', default='123456', help='which sections to run, e.g. 5')
    ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    torch.manual_seed(0)
    d, sizes, ks, B = (1536, [128, 512, 2048, 8192], [20, 40, 80, 160], 2048) if not a.quick else (256, [32, 64, 128, 256], [2, 4, 8, 16], 256)
    N = 4 * B
    E = np.random.default_rng(0).standard_normal((N, d), dtype=np.float32) + 0.5
    X = F.normalize(torch.from_numpy(E), dim=-1)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), no GPU" if not torch.cuda.is_available() else f"GPU {torch.cuda.get_device_name()}")
    print(f"shape: d {d}, sizes {sizes}, k {ks}, batch {B}")
    res = dict(d=d, sizes=sizes, ks=ks, batch=B, steps=a.steps, quick=a.quick, only=a.only)
    if '1' in a.only:
        ref = time_reference_training(E, d, sizes, ks, B, a.steps)
        ours = time_sail_training(X, d, sizes, [ks], B, a.steps)
        print(f"1. training, one config   reference data path + model: {ref:8.0f} samples/s")
        print(f"                          SAIL (resident data, sparse decode/backward): {ours:8.0f} samples/s   ratio x{ours/ref:.1f}")
        res['training'] = dict(reference=ref, sail=ours)
    if '2' in a.only:
        patterns = [[5, 5, 5, 5], [10, 10, 10, 10], [20, 20, 20, 20], [30, 30, 30, 30], [5, 10, 20, 40], [10, 20, 40, 80], [20, 40, 80, 160], [30, 60, 120, 240]]
        if a.quick: patterns = [[max(1, k // 10) for k in p] for p in patterns]
        shapes = [(d, sizes, B, f'paper shape (d {d}, D {sizes[-1]}, batch {B})'),
                  (192, [16, 64, 256, 1024], 256, 'demo shape (d 192, D 1024, batch 256)')]
        for (dd, ss, bb, label) in (shapes if not a.quick else [(d, sizes, B, 'quick')]):
            pats = [p for p in patterns if all(k <= D for k, D in zip(p, ss))]
            Xs = F.normalize(torch.randn(8 * bb, dd), dim=-1)
            t = time.perf_counter(); time_sail_training(Xs, dd, ss, pats, bb, a.steps); t_fam = time.perf_counter() - t
            t = time.perf_counter()
            for i, p in enumerate(pats): time_sail_training(Xs, dd, ss, [p], bb, a.steps, seeds=[42 + i])
            t_seq = time.perf_counter() - t
            print(f"2. family of {len(pats)} configs, {label}: one after another {t_seq:6.2f} s, batched {t_fam:6.2f} s   ratio x{t_seq/t_fam:.1f}")
            res.setdefault('family', []).append(dict(shape=label, members=len(pats), one_by_one_s=t_seq,
                                                     batched_s=t_fam))
    if '3' in a.only or '4' in a.only:
        sae = MatryoshkaSAE(d, sizes, [ks], seeds=[1]).eval()
        z = sae.preacts(X[:1024])[0]
        sae.theta[:] = torch.quantile(z.flatten()[::7], 1 - ks[-1] / sizes[-1])   # about k active features per row
        ref_model = ReferenceSAE(d, sizes, ks); ref_model.theta.fill_(float(sae.theta))
        n1 = min(N, 256)
        t = time.perf_counter()
        with torch.no_grad():
            blobs = [ref_model.infer(F.normalize(torch.from_numpy(E[i]), dim=0)[None])[0].numpy().tobytes() for i in range(n1)]
        r1 = n1 / (time.perf_counter() - t)
        t = time.perf_counter(); indptr, indices, values = compute_codes(sae, E, 2048); rb = N / (time.perf_counter() - t)
        print(f"3. codes   reference batch-size-1 loop: {r1:8.0f} rows/s;  SAIL batched: {rb:8.0f} rows/s   ratio x{rb/r1:.0f}  (mean L0 {np.diff(indptr).mean():.0f})")
        res['codes'] = dict(reference=r1, sail=rb)
        sparse, dense = io.BytesIO(), io.BytesIO()
        pq.write_table(codes_table([f's{i}' for i in range(N)], indptr, indices, values), sparse)
        full = np.zeros((N, sizes[-1]), np.float32)
        for i in range(N): full[i, indices[indptr[i]:indptr[i + 1]]] = values[indptr[i]:indptr[i + 1]]
        pq.write_table(pa.table({'slice_id': [f's{i}' for i in range(N)], 'sparse_features': [r.tobytes() for r in full]}), dense)
        raw = 4 * sizes[-1]
        print(f"4. storage  dense float32 row: {raw} bytes raw, {dense.tell()/N:.0f} bytes/row in snappy Parquet;  "
              f"sparse Parquet: {sparse.tell()/N:.0f} bytes/row   ratio x{raw/(sparse.tell()/N):.1f} raw, x{dense.tell()/sparse.tell():.1f} vs compressed")
        res['storage'] = dict(l0=float(np.diff(indptr).mean()), raw=raw, dense_parquet=dense.tell() / N,
                              sparse_parquet=sparse.tell() / N)

    if '5' in a.only:
        X5 = structured_embeddings(8 * B + 2048, d); tr, va = X5[:8 * B], X5[8 * B:]
        steps5 = 6 * a.steps
        res5 = {dt: time_sail_training(tr, d, sizes, [ks], B, steps5, dtype=dt, lr=1e-3, model=True)
                for dt in ('float32', 'bfloat16')}
        r2 = {dt: evaluate(m, va)[0]['r2'][-1] for dt, (_, m) in res5.items()}
        (f32, _), (b16, _) = res5['float32'], res5['bfloat16']
        print(f"5. training on the CPU, {steps5} steps   fp32: {f32:8.0f} samples/s (val R² {r2['float32']:.4f});  "
              f"bf16 autocast: {b16:8.0f} samples/s (val R² {r2['bfloat16']:.4f})   ratio x{b16/f32:.2f}, ΔR² {r2['bfloat16'] - r2['float32']:+.4f}")
        res['bf16'] = dict(steps=steps5, fp32=f32, bf16=b16, r2_fp32=float(r2['float32']),
                           r2_bf16=float(r2['bfloat16']))
    if '6' in a.only:
        for variant in VARIANTS:
            f = floor_and_training(X, d, sizes, ks, B, max(10, a.steps), variant)
            print(f"6. training step vs its floor, {variant}: two dense GEMMs {f['floor']:8.0f} samples/s "
                  f"({f['floor_ms']:.0f} ms), SAIL {f['sail']:8.0f} samples/s ({f['sail_ms']:.0f} ms)   "
                  f"{100 * f['ratio']:.0f} % of the floor (fastest rounds: "
                  f"{100 * min(f['floor_all_ms']) / min(f['sail_all_ms']):.0f} %); load average {f['load_avg']:.1f}")
            res.setdefault('floor', []).append(f)
    every = all(c in a.only for c in '123456')
    if a.readme and not every: print('--readme ignored: an --only run does not replace the README table')
    if not every and (RESULTS/'sae_benchmarks.json').exists():      # keep the stored sections (and their stamp) this
        ran = {k: res[k] for k in ('training', 'family', 'codes', 'storage', 'bf16', 'floor') if k in res}   # run did
        if 'floor' in ran: ran['floor'] = [{**f, 'commit': stamp()['commit']} for f in ran['floor']]          # not redo
        res = {**load('sae_benchmarks'), **ran}
    publish('sae_benchmarks', res, render, a.readme and every)

if __name__ == '__main__': main()
