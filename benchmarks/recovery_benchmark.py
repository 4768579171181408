"""Performance recovery refits: SAIL's sliced top-N columns against the reference's zero-masked full-width matrices.

The reference refits each top-N probe on the full (rows x 8192) dense matrix with every other column zeroed (spec §9,
§17.5 item 35); SAIL slices the N columns out of the sparse code matrix. Same rows, labels, N grid and solver
settings, measured in the same run. Results go to benchmarks/results/recovery_benchmark.{json,md} and, with --readme,
between the README's recovery-benchmark markers.

    python benchmarks/recovery_benchmark.py [--rows 5000] [--features 8192] [--readme]
"""
import argparse, sys, time, warnings
from pathlib import Path
import numpy as np, scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sail.probes import fit_probe, RECOVERY_N
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

def render(r:dict)->str:
    "The README's sentence for this benchmark, from its JSON."
    ref, ours = r['reference_s'], r['sail_s']
    return (f"The {len(r['n_grid'])} recovery refits of one target at {r['rows']:,} × {r['features']:,} (L0 {r['k']}) "
            f"take {ours:.2f} s on sliced sparse columns against {ref:.1f} s on the reference's zero-masked dense "
            f"matrices (×{ref / ours:,.0f}), both with saga, measured in the same run. {where(r)}.")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rows', type=int, default=5000); ap.add_argument('--features', type=int, default=8192); ap.add_argument('--k', type=int, default=160)
    ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    g = np.random.default_rng(0)
    cols = np.stack([g.choice(a.features, a.k, replace=False) for _ in range(a.rows)])
    X = sp.csr_matrix((g.random(a.rows * a.k).astype(np.float32), cols.ravel(), np.arange(0, a.rows * a.k + 1, a.k)), shape=(a.rows, a.features))
    w = np.zeros(a.features); top = g.choice(a.features, 20, replace=False); w[top] = g.normal(size=20) * 5
    y = (X @ w + g.normal(size=a.rows) > 0).astype(int)
    ranking = np.r_[top, np.setdiff1d(np.arange(a.features), top)]
    t = time.perf_counter()
    for n in RECOVERY_N: fit_probe(X[:, ranking[:n]], y, solver="saga")    # same solver as the reference: this measures the slicing
    ours = time.perf_counter() - t
    dense = X.toarray()
    t = time.perf_counter()
    for n in RECOVERY_N:
        masked = np.zeros_like(dense); masked[:, ranking[:n]] = dense[:, ranking[:n]]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            LogisticRegression(solver='saga', C=1.0, l1_ratio=0.5, class_weight='balanced', max_iter=200, random_state=42).fit(masked, y)
    ref = time.perf_counter() - t
    publish('recovery_benchmark', dict(rows=a.rows, features=a.features, k=a.k, n_grid=[int(n) for n in RECOVERY_N],
                                       reference_s=ref, sail_s=ours), render, a.readme)

if __name__ == '__main__': main()
