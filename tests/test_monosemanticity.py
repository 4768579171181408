"Monosemanticity: the vectorised scores equal a per-feature loop written from spec §8; hand-computed values."
import math
import numpy as np, pandas as pd, pytest, scipy.sparse as sp
from sail.monosemanticity import (top_samples, mean_pairwise_jaccard, null_baseline, specificity, feature_scores,
                                  config_scores, top_mean)

def _loop_scores(X, organs, scan, null10, null50):
    "The reference's algorithm, one feature at a time: walk sorted activations, one slice per scan."
    out = {}
    for f in range(X.shape[1]):
        col = X[:, f]
        if (col > 0).all(): continue
        seen, picked = set(), []
        for r in np.argsort(-col, kind='stable'):
            if col[r] <= 0 or len(picked) == 50: break
            if scan[r] in seen: continue
            seen.add(scan[r]); picked.append(r)
        if len(picked) < 10: continue
        res = {}
        for N, null in ((10, null10), (50, null50)):
            if len(picked) < N: res[N] = np.nan; continue
            sets = [set(np.flatnonzero(organs[r])) for r in picked[:N]]
            js = [1.0 if not (a | b) else len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:]]
            c = np.bincount(np.concatenate([np.flatnonzero(organs[r]) for r in picked[:N]] + [np.zeros(0, int)]), minlength=organs.shape[1]).astype(float)
            p = c[c > 0] / c.sum() if c.sum() else np.zeros(0)
            S = 1 - (-(p * np.log(p)).sum()) / math.log(organs.shape[1]) if c.sum() else 0.0
            res[N] = max(0.0, np.mean(js) - null) * S
        out[f] = res
    return out

def test_vectorised_equals_loop():
    g = np.random.default_rng(3)
    n, F = 400, 60
    X = np.where(g.random((n, F)) < 0.25, g.random((n, F)), 0).astype(np.float32)
    X[:, 7] = 0.3                                                      # always active: excluded
    X[:, 8] = np.where(np.arange(n) < 30, g.random(n), 0)              # few activating rows
    organs = g.random((n, 121)) < 0.08
    organs[::17] = False                                               # some empty organ sets
    scan = g.integers(0, 150, n)
    nb = null_baseline(organs)
    n10, n50 = nb.set_index('n').null_mean[10], nb.set_index('n').null_mean[50]
    fs = feature_scores(sp.csr_matrix(X), organs, scan, nb).set_index('feature')
    ref = _loop_scores(X, organs, scan, n10, n50)
    assert sorted(fs.index) == sorted(ref)
    for f, r in ref.items():
        np.testing.assert_allclose(fs.monosemanticity_10[f], r[10], rtol=1e-5, atol=1e-7)
        if np.isnan(r[50]): assert np.isnan(fs.monosemanticity_50[f])
        else: np.testing.assert_allclose(fs.monosemanticity_50[f], r[50], rtol=1e-5, atol=1e-7)

def test_hand_computed_values():
    O = np.zeros((3, 4), bool); O[0, [0, 1]] = True; O[1, [1, 2]] = True          # third set empty
    assert mean_pairwise_jaccard(O) == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert mean_pairwise_jaccard(np.zeros((4, 4), bool)) == 1.0                   # all empty: Jaccard 1 everywhere
    assert specificity(O, 4) == pytest.approx(1 - (-(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5))) / math.log(4))
    assert top_mean([0.9, 0.1, 0.5, np.nan, 0.7], 2) == pytest.approx(0.8)
    fs = pd.DataFrame(dict(monosemanticity_10=np.arange(60) / 100, monosemanticity_50=np.nan, jaccard_10=0.5, coherence_10=0.1, specificity_10=0.5))
    cs = config_scores(fs, pd.DataFrame(dict(n=[10, 50], null_mean=[0.1, 0.2])))
    assert cs['M_top10_mean'] == pytest.approx(np.mean(np.arange(50, 60) / 100))
    assert cs['M_top50_mean'] == pytest.approx(np.mean(np.arange(10, 60) / 100))

def test_null_baseline_is_seeded_and_matches_definition():
    g = np.random.default_rng(0); organs = g.random((300, 121)) < 0.1
    nb = null_baseline(organs, sizes=(10,), draws=20)
    r = np.random.default_rng(42)
    expect = [mean_pairwise_jaccard(organs[r.choice(300, 10, replace=False)]) for _ in range(20)]
    assert nb.null_mean[0] == pytest.approx(np.mean(expect)) and nb.null_std[0] == pytest.approx(np.std(expect))

def test_one_per_scan_uses_modality_and_image_id():
    X = sp.csr_matrix(np.array([[0.9], [0.8], [0.7]], np.float32))
    rows, _ = top_samples(X, np.array([0, 1, 0]), n=3)                     # rows 0 and 2 are one scan
    assert rows[0].tolist() == [0, 1, -1]
