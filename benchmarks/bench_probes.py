"""The probes step's solver: proximal Newton (`eval.probe_solver: newton`, the default) against the reference's saga,
on the same inputs in the same run.

Inputs are a finished run's (default the demo's): one encoder's dense embeddings and one SAE configuration's codes,
train/val/test as the probes step reads them. Both solvers run exactly what `run_probes` runs for them — dense probes
on the standardised embeddings, sparse probes on the codes, then the top-N recovery curves of every target whose dense
validation AUC passes `eval.min_dense_auc` (ranked by the saga sparse probe's coefficients for both, so only the
solver differs) — with the same number of workers. Prints seconds per part, the speed-up, how many fits each left
unconverged, and the largest metric differences.

    python benchmarks/bench_probes.py [--config demo] [--encoder astra-ct] [--sae first] [--tasks 8] [--jobs 2]
                                      [--readme]

`--tasks N` keeps the first N probe tasks (saga on a 2048-d embedding takes minutes per task on 2 cores). Results go to
benchmarks/results/bench_probes.{json,md}; with --readme, between the README's bench-probes markers (the README has
none yet: add them where the table should go).
"""
import argparse, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from sail.config import load_config
from sail.codes import split_data
from sail.train import trained_saes
import sail.probes as P
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

def render(r:dict)->str:
    "The table of seconds, unconverged fits and metric differences per part, from the JSON."
    rows = ['| part | saga s | newton s | saga / newton | unconverged saga / newton | max abs ROC-AUC difference |',
            '|---|---|---|---|---|---|']
    for part, v in r['parts'].items():
        rows.append(f"| {part} | {v['saga']:.1f} | {v['newton']:.1f} | ×{v['saga'] / v['newton']:.1f} | "
                    f"{v['unconverged'][0]} / {v['unconverged'][1]} of {v['unconverged'][2]} | {v['max_diff']:.4f} |")
    return '\n'.join(rows + ['', f"{r['run']}: {r['encoder']} and {r['sae']}, {r['tasks']} tasks, {r['jobs']} workers, "
                              f"both solvers in the same run. {where(r)}."])

def _inputs(cfg, enc, ref):
    d = {k: split_data(cfg.paths, enc, k, dense=True) for k in ('train', 'val', 'test')}
    X, sl = {k: v.dense for k, v in d.items()}, {k: v.rows for k, v in d.items()}
    Xs = {k: split_data(cfg.paths, ref, k).codes for k in ('train', 'val', 'test')}
    return X, sl, Xs

def _recovery(cfg, Xs, sl, coefs, dense_metrics, groups, solver):
    cfg.eval.probe_solver = solver
    return P.recover_config(cfg.eval, cfg.workers, Xs, sl, coefs, dense_metrics, groups)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', default='demo'); ap.add_argument('--encoder', default='')
    ap.add_argument('--sae', default='first', help="configuration name, or 'first'"); ap.add_argument('--tasks', type=int, default=0)
    ap.add_argument('--jobs', type=int, default=2); ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    cfg = load_config(a.config); cfg.workers = a.jobs
    refs = trained_saes(cfg.paths)
    enc = a.encoder or refs[0].encoder
    ref = next(r for r in refs if r.encoder == enc and (a.sae == 'first' or r.config == a.sae))
    X, sl, Xs = _inputs(cfg, enc, ref)
    names = [t[0] for t in P.tasks(P.target_groups(cfg.eval))]
    keep = names[:a.tasks] if a.tasks else names
    groups = P.target_groups(cfg.eval)
    groups = {g: s for g, s in groups.items() if any(n == g or n.startswith(g + ':') for n in keep)}
    print(f"{cfg.name}: {enc} ({X['train'].shape[1]}-d, {X['train'].shape[0]} train rows) and {ref.variant}/{ref.config} "
          f"({Xs['train'].shape[1]} features); {len(P.tasks(groups))} tasks; {a.jobs} workers")
    out, res = {}, {}
    for solver in ('saga', 'newton'):
        t0 = time.perf_counter()
        dense = P.probe_representation(X, sl, True, groups, a.jobs, cfg.eval.probe_train_rows, solver)
        t1 = time.perf_counter()
        sparse = P.probe_representation(Xs, sl, False, groups, a.jobs, cfg.eval.probe_train_rows, solver)
        t2 = time.perf_counter()
        res[solver] = (dense, sparse)
        out[solver] = dict(dense=t1 - t0, sparse=t2 - t1)
    ranking = res['saga'][1].coefficients                                   # one ranking for both recovery runs
    for solver in ('saga', 'newton'):
        t0 = time.perf_counter()
        rec = _recovery(cfg, Xs, sl, ranking, res['saga'][0].metrics, groups, solver)
        out[solver]['recovery'] = time.perf_counter() - t0
        res[solver] = res[solver] + (rec,)
    parts = {}
    print(f"{'part':10s} {'saga s':>9s} {'newton s':>9s} {'ratio':>7s}  unconverged saga / newton   max |Δ ROC-AUC|")
    for i, part in enumerate(('dense', 'sparse', 'recovery')):
        s_, n_ = res['saga'][i], res['newton'][i]
        if part == 'recovery':
            cs, cn = s_.curves, n_.curves
            unconv = (int((~cs.converged).sum()), int((~cn.converged).sum()), len(cs))
            diff = np.abs(cs.val_roc_auc.to_numpy() - cn.val_roc_auc.to_numpy()).max() if len(cs) else float('nan')
        else:
            ms, mn = s_.metrics, n_.metrics
            j = ms.merge(mn, on=['task', 'target', 'split'], suffixes=('_s', '_n'))
            unconv = (int((~ms.drop_duplicates('task').converged).sum()), int((~mn.drop_duplicates('task').converged).sum()), ms.task.nunique())
            diff = np.abs(j.roc_auc_s - j.roc_auc_n).max()
        print(f"{part:10s} {out['saga'][part]:9.1f} {out['newton'][part]:9.1f} {out['saga'][part] / out['newton'][part]:6.1f}x"
              f"  {unconv[0]:3d} / {unconv[1]:3d} of {unconv[2]:4d} fits        {diff:.4f}")
        parts[part] = dict(saga=out['saga'][part], newton=out['newton'][part], unconverged=list(unconv),
                           max_diff=float(diff))
    tot = {s: sum(v.values()) for s, v in out.items()}
    print(f"{'total':10s} {tot['saga']:9.1f} {tot['newton']:9.1f} {tot['saga'] / tot['newton']:6.1f}x")
    res = dict(run=cfg.name, encoder=enc, sae=f"{ref.variant}/{ref.config}", tasks=len(P.tasks(groups)), jobs=a.jobs,
               parts=parts)
    publish('bench_probes', res, render, a.readme)

if __name__ == '__main__': main()
