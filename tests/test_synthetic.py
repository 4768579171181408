"""Synthetic ground truth (issue 30): the generator's promises and every metric against planted answers computed by
hand, by brute force or by scikit-learn — not by sail.synthetic itself."""
import itertools, importlib, sys
import numpy as np, pandas as pd, pytest, scipy.sparse as sp, torch
from sklearn.metrics import precision_recall_fscore_support
from sail.core import project_root
from sail.synthetic import (make_synthetic, ground_truth_scores, match_dictionaries, firing_scores, uniqueness,
                            parent_absorption, zipf_frequencies, train_topk, topk_codes, SyntheticData)

@pytest.fixture(scope='module')
def syn(): return make_synthetic(6000, n_features=96, d=24, n_parents=6, branching=3, seed=5)

def test_generator_is_seeded_and_keeps_its_promises(syn):
    again = make_synthetic(6000, n_features=96, d=24, n_parents=6, branching=3, seed=5)
    np.testing.assert_array_equal(syn.X, again.X)
    np.testing.assert_array_equal(syn.codes.toarray(), again.codes.toarray())
    assert not np.array_equal(make_synthetic(6000, n_features=96, d=24, n_parents=6, branching=3, seed=6).X, syn.X)
    F_, d = syn.dictionary.shape
    assert F_ > d and np.allclose(np.linalg.norm(syn.dictionary, axis=1), 1, atol=1e-6)       # superposition
    C = syn.codes.toarray()
    assert (C >= 0).all() and np.allclose(syn.X, C @ syn.dictionary, atol=1e-4)
    for p, kids in syn.hierarchy.groupby('parent').child:                                     # children need the parent
        assert not (C[:, kids] > 0).any(1)[C[:, p] == 0].any()
    free = np.setdiff1d(np.arange(F_), syn.hierarchy.child)                          # Zipf marginals elsewhere
    want = zipf_frequencies(F_)[free]
    assert np.abs((C[:, free] > 0).mean(0) - want).max() < 4 * np.sqrt(want.max() / len(C)) + 0.01

def test_the_true_dictionary_scores_one(syn):
    s = ground_truth_scores(syn.dictionary, syn.codes, syn).iloc[0]
    for col in ('mcc', 'precision', 'recall', 'f1', 'uniqueness'): assert s[col] == pytest.approx(1.0, abs=1e-12), col
    assert s.dead == 0 and s.absorption == 0 and s.l0 == pytest.approx(syn.codes.nnz / 6000)

def test_a_permuted_dictionary_scores_the_same(syn):
    perm = np.random.default_rng(0).permutation(96)
    a = ground_truth_scores(syn.dictionary, syn.codes, syn)
    b = ground_truth_scores(syn.dictionary[perm], syn.codes[:, perm], syn)
    pd.testing.assert_frame_equal(a, b)

def test_mcc_is_the_best_one_to_one_assignment_by_brute_force():
    g = np.random.default_rng(1)
    W, T = g.standard_normal((5, 6)), g.standard_normal((5, 6))
    cos = (W / np.linalg.norm(W, axis=1, keepdims=True)) @ (T / np.linalg.norm(T, axis=1, keepdims=True)).T
    best = max(np.mean([cos[i, p[i]] for i in range(5)]) for p in itertools.permutations(range(5)))
    assert match_dictionaries(W, T).mcc == pytest.approx(best)

def test_rotated_and_duplicated_dictionaries_score_the_hand_computed_values():
    T = np.eye(10)[:5]                                       # 5 orthogonal features in 10 dimensions
    a = 0.4                                                  # each direction rotated by a towards an unused axis
    assert match_dictionaries(np.cos(a) * T + np.sin(a) * np.eye(10)[5:], T).mcc == pytest.approx(np.cos(a))
    C = sp.csr_matrix(np.eye(5).repeat(4, 0))                # 20 rows, each feature active on 4
    data = SyntheticData(np.asarray(C @ T), C, T, pd.DataFrame(dict(parent=[0], child=[1])), np.full(5, 0.2))
    A = sp.hstack([C, C[:, :2]]).tocsr()                     # latents 5, 6 copy features 0, 1 and fire with them
    s = ground_truth_scores(np.vstack([T, T[:2]]), A, data).iloc[0]
    assert s.mcc == pytest.approx(1.0) and s.f1 == pytest.approx(1.0) and s.uniqueness == pytest.approx(5 / 7)
    # a copy that fires on 1 of its feature's 4 rows: precision 1, recall 1/4, F1 2/5 -> mean over 6 live latents
    A2 = sp.hstack([C, sp.csr_matrix(np.eye(20)[:, [0]])]).tocsr()
    s2 = ground_truth_scores(np.vstack([T, T[:1]]), A2, data).iloc[0]
    assert s2.f1 == pytest.approx((5 + 0.4) / 6) and s2.recall == pytest.approx((5 + 0.25) / 6)
    assert s2.precision == pytest.approx(1.0) and s2.uniqueness == pytest.approx(5 / 6)

def test_firing_scores_match_scikit_learn():
    g = np.random.default_rng(2)
    A, C = (g.random((300, 6)) < 0.3) * g.random((300, 6)), (g.random((300, 4)) < 0.4).astype(float)
    A[:, 5] = 0                                                          # one dead latent
    best = np.array([0, 1, 2, 3, 0, 1])
    fs = firing_scores(sp.csr_matrix(A), sp.csr_matrix(C), best)
    for j in range(5):
        p, r, f, _ = precision_recall_fscore_support(C[:, best[j]] > 0, A[:, j] > 0, average='binary')
        assert (fs.precision[j], fs.recall[j], fs.f1[j]) == pytest.approx((p, r, f)), j
    assert not fs.live[5] and np.isnan(fs.f1[5]) and fs.recall[5] == 0
    assert uniqueness(best, fs.live) == pytest.approx(4 / 5)

def test_a_planted_absorbing_latent_gives_the_hand_computed_rate():
    # parent 0 active on rows 0-19; child 1 on rows 0-5, child 2 on rows 6-9; parent latent silent on rows 0-3 and 6
    C = np.zeros((24, 4)); C[:20, 0] = 1; C[:6, 1] = 1; C[6:10, 2] = 1; C[20:, 3] = 1
    A = C.copy(); A[[0, 1, 2, 3, 6], 0] = 0; A[12, 0] = 0                 # row 12: silent, but no child fires there
    hier = pd.DataFrame(dict(parent=[0, 0], child=[1, 2]))
    ab = parent_absorption(sp.csr_matrix(A), sp.csr_matrix(C), hier, np.arange(4))
    assert ab.absorption.tolist() == [pytest.approx(5 / 20)] and ab.n_active.tolist() == [20]
    ab = parent_absorption(sp.csr_matrix(A), sp.csr_matrix(C), hier, np.array([0, 1, -1, 3]))   # child 2 unmatched
    assert ab.absorption.tolist() == [pytest.approx(4 / 20)]

def test_scores_are_per_level_prefix():
    T = np.eye(8)[:4]
    C = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0]], float))
    data = SyntheticData(np.asarray(C @ T), C, T, pd.DataFrame(dict(parent=[0], child=[3])), np.full(4, 0.5))
    A = C.copy().tolil(); A[1, 0] = 0                                       # the parent's latent silent where 3 fires
    s = ground_truth_scores(T, A.tocsr(), data, sizes=[2, 4])
    assert s['size'].tolist() == [2, 4] and s.mcc.tolist() == [pytest.approx(1), pytest.approx(1)]
    assert s.l0.tolist() == [pytest.approx(3 / 4), pytest.approx(5 / 4)]
    assert np.isnan(s.absorption[0]) and s.absorption[1] == pytest.approx(1 / 3)   # child latent only in level 2
    assert s.recall[0] == pytest.approx((2 / 3 + 1) / 2)

def test_bad_inputs_name_what_was_expected(syn):
    with pytest.raises(ValueError, match='codes have 95 latents, the decoder 96 rows'):
        ground_truth_scores(syn.dictionary, syn.codes[:, :95], syn)
    with pytest.raises(ValueError, match='codes have 10 rows, the truth 6000'):
        ground_truth_scores(syn.dictionary, syn.codes[:10], syn)
    with pytest.raises(ValueError, match='2 parents x 3 children need 8 features, only 7 exist'):
        make_synthetic(10, n_features=7, d=4, n_parents=2, branching=3)

def test_topk_baseline_keeps_k_per_row_and_is_seeded(syn):
    X = torch.from_numpy(syn.X[:2000])
    a = topk_codes(train_topk(X, 32, 3, epochs=2, batch_size=256, seed=1), X)
    b = topk_codes(train_topk(X, 32, 3, epochs=2, batch_size=256, seed=1), X)
    assert (np.diff(a.indptr) <= 3).all() and (a != b).nnz == 0

def test_benchmark_same_seed_same_numbers(monkeypatch):
    sys.path.insert(0, str(project_root()/'benchmarks'))
    bench = importlib.import_module('synthetic_ground_truth')
    monkeypatch.setitem(bench.SIZES, 'tiny', dict(n_train=1024, n_eval=512, n_features=48, d=16, n_parents=4,
                                                  sizes=[8, 16, 48], ks=[1, 2, 3], epochs=2, batch_size=256, lr=3e-3))
    r1, r2 = bench.run('tiny', seed=3), bench.run('tiny', seed=3)
    pd.testing.assert_frame_equal(pd.DataFrame(r1['table']), pd.DataFrame(r2['table']))   # bit-identical (nan = nan)
    np.testing.assert_equal(r1['parent_absorption'], r2['parent_absorption'])
    assert {t['method'] for t in r1['table']} == set(bench.METHODS)
    assert len([t for t in r1['table'] if t['method'] == 'matryoshka-paper']) == 3
    md = bench.render(dict(r1, machine=dict(cpus=2, cpu_model='x'), when='now', commit='abc'))
    assert md.count('\n| ') == len(r1['table']) + 1 and 'Published ordering' in md
