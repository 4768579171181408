"""Trust steps: k-sparse probing, absorption on anatomy and ablation selectivity against planted answers and
hand computations; the per-configuration steps end to end on the lesson run."""
import dataclasses
import numpy as np, pandas as pd, pytest, scipy.sparse as sp, torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sail.sae import MatryoshkaSAE
from sail.totalseg import ORGANS
from sail.sparse_probing import (mean_difference, top_features, k_sparse_probe, sparse_probing, absorption_rates,
                                 ANATOMY, SPARSE_PROBING, ABSORPTION)
from sail.ablation import (decode_codes, ablate, fit_dense_probes, score_probes, ablate_set, selectivity, auc,
                           SELECTIVITY_FLOOR, ABLATION, AblationSettings)

# --- k-sparse probing -------------------------------------------------------------------------------------------

def test_mean_difference_by_loop():
    g = np.random.default_rng(0)
    X = np.where(g.random((50, 7)) < 0.4, g.random((50, 7)), 0); y = g.random(50) < 0.3
    by_loop = [X[y, j].mean() - X[~y, j].mean() for j in range(7)]             # one feature at a time
    np.testing.assert_allclose(mean_difference(sp.csr_matrix(X), y.astype(int)), by_loop, rtol=1e-12)

def test_k_sparse_probe_finds_the_planted_features():
    "Two planted features carry the label; k = 2 finds both and equals scikit-learn's probe on those two columns."
    g = np.random.default_rng(1)
    n = 600
    y = (g.random(n) < 0.4).astype(int)
    X = np.where(g.random((n, 30)) < 0.2, g.random((n, 30)) * 0.3, 0)
    X[:, 11] = y * (0.5 + g.random(n))                                           # fires on positives
    X[:, 23] = (1 - y) * (0.5 + g.random(n))                                     # fires on negatives
    tr, va = slice(0, 400), slice(400, None)
    p = k_sparse_probe(sp.csr_matrix(X[tr]), y[tr], {'val': (sp.csr_matrix(X[va]), y[va])}, 2)
    assert sorted(p.features.tolist()) == [11, 23]
    skl = LogisticRegression(solver='saga', C=1.0, l1_ratio=0.5, class_weight='balanced', max_iter=100_000,
                             tol=1e-10).fit(X[tr][:, p.features], y[tr])
    assert abs(p.aucs['val'] - roc_auc_score(y[va], skl.predict_proba(X[va][:, p.features])[:, 1])) < 1e-3
    assert p.aucs['val'] == 1.0

def test_sparse_probing_one_row_per_target_and_k():
    g = np.random.default_rng(2)
    n = 300
    sl = pd.DataFrame(dict(slice_id=np.arange(n), plane=g.choice(['sagittal', 'coronal', 'axial'], n),
                           liver=g.random(n) < 0.5))
    X = np.where(g.random((n, 8)) < 0.3, g.random((n, 8)), 0)
    for i, p in enumerate(['sagittal', 'coronal', 'axial']): X[:, i] += (sl.plane == p) * 2   # feature i = plane i
    groups = {'plane': dict(kind='multiclass', column='plane', targets=['sagittal', 'coronal', 'axial']),
              'organs': dict(kind='multilabel', column=None, targets=['liver'])}
    part = np.r_[np.zeros(200, int), np.ones(100, int)]
    Xs = {s: sp.csr_matrix(X[part == i]) for i, s in enumerate(('train', 'val'))}
    rows = {s: sl[part == i].reset_index(drop=True) for i, s in enumerate(('train', 'val'))}
    t = sparse_probing(Xs, rows, groups, ks=(1, 5))
    assert len(t) == (3 + 1) * 2                                             # three plane classes, liver; two k
    k1 = t[t.k == 1].set_index('target')
    assert k1.features[['sagittal', 'coronal', 'axial']].tolist() == ['0', '1', '2']
    assert (k1.val_roc_auc[['sagittal', 'coronal', 'axial']] == 1.0).all()
    assert (t[t.k == 5].features.str.split().map(len) == 5).all()
    rows['train'] = rows['train'].assign(liver=True)                        # every training slice shows the liver:
    t = sparse_probing(Xs, rows, groups, ks=(1,))                           # no probe can be fitted, none is reported
    assert sorted(t.target) == ['axial', 'coronal', 'sagittal']

# --- absorption ---------------------------------------------------------------------------------------------------

def _organs(n, **cols):
    return pd.DataFrame({k: np.asarray(v, bool) for k, v in cols.items()}, index=range(n))

def test_absorption_planted_rates_by_hand():
    """Lungs, three lobes on 10 evaluated rows. Parent present on rows 0-7. Feature 0 fires on rows 3, 4, 5, 7:
    its training mean difference for the parent is 4/8 = 0.5, that of feature 1 (rows 0-2 in training) 3/8: the parent's
    feature is 0. The upper-left lobe (rows 0-2) is detected best by feature 1 (difference 1); the lower lobes are
    detected best by feature 0 itself (differences 6/7 and 1/8): no child-specific feature. Feature 2 fires on rows 8,
    9 (no lung). Evaluated: feature 1 fires on rows 0, 1 only. Silent parent rows: 0, 1, 2, 6; absorbed (a
    child-specific feature fires): 0, 1 -> 2/8; recall 4/8."""
    n = 10
    ul = np.isin(np.arange(n), [0, 1, 2]); ll = np.isin(np.arange(n), [3, 4, 5]); rl = np.isin(np.arange(n), [6, 7])
    O = _organs(n, lung_upper_lobe_left=ul, lung_lower_lobe_left=ll, lung_lower_lobe_right=rl)
    X = np.zeros((n, 3)); X[[3, 4, 5, 7], 0] = 1; X[[0, 1], 1] = 1; X[[8, 9], 2] = 1
    Xtr = X.copy(); Xtr[2, 1] = 1                                            # in training, feature 1 fires on row 2 too
    t = absorption_rates(sp.csr_matrix(Xtr), O, sp.csr_matrix(X), O, {'lungs': ANATOMY['lungs']})
    r = t.iloc[0]
    assert (r.parent, r.parent_feature, r.child_features, r.n_positive) == ('lungs', 0, '1', 8)
    assert r.absorbed == 2 and r.absorption_rate == pytest.approx(2 / 8) and r.parent_recall == pytest.approx(4 / 8)

def test_absorption_per_level_prefix():
    """Kidneys: left on rows 0-2, right on row 3. Training: feature 0 fires on rows 0 and 3, feature 1 on rows 0-2.
    Level 1 (features < 1): feature 0 is all there is, for the parent and both children: nothing child-specific, no
    absorption. Level 2: the parent's feature is 1 (difference 3/4 against 2/4), the left kidney's is 1 too (the
    parent's), the right kidney's is 0 (1 − 1/5 against 0 − 3/5). Evaluated (feature 0 on row 3 only): feature 1 is
    silent on parent row 3, where the right kidney's feature 0 fires: absorbed 1/4, recall 3/4."""
    n = 6
    O = _organs(n, kidney_left=[1, 1, 1, 0, 0, 0], kidney_right=[0, 0, 0, 1, 0, 0])
    X = np.zeros((n, 2)); X[3, 0] = 1; X[[0, 1, 2], 1] = 1
    Xtr = X.copy(); Xtr[0, 0] = 1                                            # training: feature 0 fires on a left row
    t = absorption_rates(sp.csr_matrix(Xtr), O, sp.csr_matrix(X), O, {'kidneys': ANATOMY['kidneys']}, [1, 2])
    lv = t.set_index('level')
    assert lv.absorption_rate[1] == 0.0 and lv.child_features[1] == '' and lv.parent_feature[1] == 0
    assert (lv.parent_feature[2], lv.child_features[2]) == (1, '0')
    assert lv.absorption_rate[2] == pytest.approx(1 / 4) and lv.parent_recall[2] == pytest.approx(3 / 4)

def test_anatomy_children_are_organs():
    kids = [c for cs in ANATOMY.values() for c in cs]
    assert set(kids) <= set(ORGANS) and len(kids) == len(set(kids))
    assert {'spine', 'ribs', 'lungs'} <= set(ANATOMY)

# --- ablation -----------------------------------------------------------------------------------------------------

def test_decode_matches_numpy_and_ablate_zeroes_columns():
    sae = MatryoshkaSAE(5, [2, 4], [1, 2], seeds=3)
    with torch.no_grad(): sae.b_dec[0] = torch.arange(5.)
    C = sp.csr_matrix(np.random.default_rng(0).random((6, 4)) * (np.random.default_rng(1).random((6, 4)) < 0.5))
    W = sae.decoder()[0].detach().numpy()
    np.testing.assert_allclose(decode_codes(sae, C), C.toarray() @ W + np.arange(5.), atol=1e-5)
    A = ablate(C, [1, 3]).toarray()
    assert (A[:, [1, 3]] == 0).all() and (A[:, [0, 2]] == C.toarray()[:, [0, 2]]).all()

def test_auc_equals_scikit_learn_with_ties():
    g = np.random.default_rng(4)
    y, s = g.integers(0, 2, 300), g.integers(0, 4, 300).astype(float)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))

def test_selectivity_by_hand():
    e = pd.DataFrame(dict(task=['t', 'u', 'v', 'v', 'w'], group=['g', 'g', 'h', 'h', 'k'],
                          target=['t', 'u', 'v1', 'v2', 'w'], split='val', delta=[-0.4, 0.5, 0.1, -0.3, 0.0]))
    s = selectivity(e, 't', 't')
    # other groups: h (|0.1| + |-0.3|) / 2 = 0.2, k 0.0 -> 0.1; the same group's u is not counted
    assert s.drop == pytest.approx(0.4) and s.other_change == pytest.approx(0.1) and s.selectivity == pytest.approx(4)
    only = selectivity(e[e.group.isin(['g', 'k'])], 't', 't')                 # others unchanged: the floor
    assert only.selectivity == pytest.approx(0.4 / SELECTIVITY_FLOOR)

def test_ablation_hits_the_planted_target():
    """Three targets, each carried by one SAE feature (decoder row = one coordinate): removing the liver feature
    takes the liver reader to chance and leaves the other two groups' readers where they were."""
    g = np.random.default_rng(5)
    n = 600
    rows = pd.DataFrame(dict(slice_id=np.arange(n), modality=g.choice(['ct', 'mri'], n), gender=g.choice(['f', 'm'], n),
                             liver=g.random(n) < 0.5))
    sae = MatryoshkaSAE(4, [4], [3], seeds=0)
    with torch.no_grad(): sae.W[0] = torch.eye(4)
    C = np.c_[rows.liver * (1 + g.random(n)), (rows.modality == 'ct') * (1 + g.random(n)),
              (rows.gender == 'm') * (1 + g.random(n)), g.random(n) * 0.1]
    C = sp.csr_matrix(C.astype(np.float32))
    groups = {'modality': dict(kind='multiclass', column='modality', targets=['mri', 'ct']),
              'sex': dict(kind='multiclass', column='gender', targets=['f', 'm']),
              'organs': dict(kind='multilabel', column=None, targets=['liver'])}
    tr, va = np.arange(400), np.arange(400, n)
    readers = fit_dense_probes(decode_codes(sae, C[tr]), rows.iloc[tr].reset_index(drop=True), groups)
    codes, rv = {'val': C[va]}, {'val': rows.iloc[va].reset_index(drop=True)}
    base = score_probes(readers, {'val': decode_codes(sae, C[va])}, rv, groups)
    assert (base.roc_auc == 1.0).all()
    e = ablate_set(sae, readers, codes, rv, base, [0], groups).set_index('target')
    assert abs(e.auc_after['liver'] - 0.5) < 0.1
    assert e.delta['mri vs ct'] == 0.0 and e.delta['f vs m'] == 0.0
    s = selectivity(e.reset_index(), 'organs:liver', 'liver')
    assert s.other_change == 0.0 and s.selectivity > 100

# --- the steps on the lesson run ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def lesson_steps(tmp_path_factory):
    from sail.steps import lesson_run
    from sail.codes import write_codes
    from sail.probes import run_probes
    lesson = lesson_run(); ref = lesson.refs[0]
    write_codes(lesson.paths, lesson.cfg.sae)
    y = tmp_path_factory.mktemp('groups')/'groups.yaml'
    y.write_text("modality: {kind: multiclass, column: modality, targets: [mri, ct]}\n"
                 "sex: {kind: multiclass, column: gender, targets: [f, m]}\n"
                 "organs: {kind: multilabel, column: null, targets: [liver, kidney_left]}\n")
    ev = dataclasses.replace(lesson.cfg.eval, target_groups=str(y))
    run_probes(lesson.paths, ev, lesson.cfg.compute)
    return lesson, ref, ev

def test_steps_make_their_files_and_stay_fresh(lesson_steps):
    lesson, ref, ev = lesson_steps
    sp_run = SPARSE_PROBING.run(lesson.paths, [ref], ev)
    ab_run = ABSORPTION.run(lesson.paths, [ref], ev)
    abl_run = ABLATION.run(lesson.paths, [ref], AblationSettings(ev))
    assert (SPARSE_PROBING.folder(lesson.paths, ref)/'probes.parquet').exists()
    assert (ABSORPTION.folder(lesson.paths, ref)/'absorption.parquet').exists()
    assert {p.name for p in ABLATION.folder(lesson.paths, ref).iterdir()} >= {
        'effects.parquet', 'selectivity.parquet', 'shortcuts.parquet', 'groups.parquet'}
    assert set(sp_run.table.columns) >= {'val_auc_k1', 'val_auc_k2', 'val_auc_k5'}
    assert set(ab_run.table.level) == {1, 2}
    # the ablated sets are the k = 5 probes' features
    sel = ABLATION.load(lesson.paths, ref).selectivity
    k5 = SPARSE_PROBING.load(lesson.paths, ref).probes.query('k == 5').set_index('target').features
    assert (sel.set_index('target').features == k5[sel.target].to_numpy()).all()
    stamp = ABLATION.artifact(lesson.paths, ref).sidecar.stat().st_mtime_ns
    ABLATION.run(lesson.paths, [ref], AblationSettings(ev))                  # fresh: not recomputed
    assert ABLATION.artifact(lesson.paths, ref).sidecar.stat().st_mtime_ns == stamp
    assert len(abl_run.table) == 3                                           # one row per target group
