"Probe defects of the reference, fixed: class columns, 2-class counting, modality-restricted targets, idempotent summaries."
import numpy as np, pandas as pd, pytest, scipy.sparse as sp
from pathlib import Path
from sail.probes import (task_labels, tasks, task_metrics, fit_probe, target_coefficients, probe_representation,
                         recovery_thresholds, TARGET_GROUPS)

def test_class_missing_from_training_does_not_shift_columns():
    g = np.random.default_rng(0)
    X = g.normal(size=(400, 3)); y = np.where(X[:, 0] > 0, 3, 1)        # classes 1 and 3 only (0 and 2 absent)
    clf = fit_probe(X, y).clf
    Xe = g.normal(size=(200, 3)); ye = np.where(Xe[:, 0] > 0, 3, np.where(Xe[:, 1] > 0.5, 0, 1))
    rows = {r['target']: r['roc_auc'] for r in task_metrics(clf, Xe, ye, list('ABCD'))}
    assert set(rows) == {'B', 'D'} and rows['D'] > 0.95                # the reference would read class 3 from column 3 (missing)

def test_two_class_group_counts_once():
    names = [n for n, g, t in tasks() if g in ('modality', 'sex', 'age_group', 'kvp')]
    assert names == ['modality', 'sex', 'age_group', 'kvp']
    g = np.random.default_rng(1); X = g.normal(size=(300, 2)); y = (X[:, 0] > 0).astype(int)
    assert len(task_metrics(fit_probe(X, y).clf, X, y, ['f', 'm'])) == 1

def test_modality_restricted_targets():
    sl = pd.DataFrame(dict(modality=['ct', 'mri', 'ct', 'mri'], pathology=['tumor', None, 'trauma', None], kvp=[80.0, None, 120.0, None]))
    assert task_labels(sl, 'pathology', ['tumor']).tolist() == [1, -1, 0, -1]
    assert task_labels(sl, 'kvp', ['80.0', '120.0']).tolist() == [0, -1, 1, -1]
    assert TARGET_GROUPS['pathology']['modality'] == 'ct' and sum(len(s['targets']) for s in TARGET_GROUPS.values()) == 40

def test_probe_representation_dense_and_sparse_same_rows_and_skips():
    g = np.random.default_rng(2)
    n = 600
    sl = pd.DataFrame(dict(modality=g.choice(['ct', 'mri'], n), gender=g.choice(['f', 'm'], n), plane=g.choice(['axial', 'coronal', 'sagittal'], n),
                           age_bin=g.choice(['<40', '>=80', '40-60'], n), kvp=np.nan, institute=g.choice(list('BCF'), n), manufacturer='ge',
                           scanner_model='x', pathology=None, **{o: g.random(n) < 0.3 for o in ['gallbladder', 'kidney_left', 'liver', 'spleen', 'prostate', 'brain', 'heart', 'sternum', 'clavicula_left', 'clavicula_right']}))
    X = g.normal(size=(n, 8)); X[:, 0] += (sl.modality == 'ct') * 3; X[:, 1] += sl.liver * 3
    parts = np.array(['train'] * 400 + ['val'] * 100 + ['test'] * 100)
    Xd = {k: X[parts == k] for k in ('train', 'val', 'test')}; sld = {k: sl[parts == k].reset_index(drop=True) for k in Xd}
    res = probe_representation(Xd, sld, dense=True)
    assert res._fields == ('metrics', 'coefficients', 'skipped')
    assert 'kvp' in res.skipped and 'scanner_model:Achieva' in res.skipped                  # no labels: reported, not a crash
    m = res.metrics
    auc = m[m.split == 'val'].set_index('task').roc_auc
    assert auc['modality'] > 0.95 and auc['organs_abdominal:liver'] > 0.9
    ms = probe_representation({k: sp.csr_matrix(np.maximum(v, 0)) for k, v in Xd.items()}, sld, dense=False).metrics
    assert set(ms.task) == set(m.task) and (ms.groupby('task').n_train.first() == m.groupby('task').n_train.first()).all()

def test_recovery_thresholds_nan_when_never_reached():
    t = recovery_thresholds(pd.DataFrame(dict(n_features=[1, 5], recovery=[0.4, 0.85])))
    assert t['n_features_50pct'] == 5 and t['n_features_80pct'] == 5 and np.isnan(t['n_features_90pct'])

def test_target_groups_from_yaml(tmp_path, make_config):
    from sail.probes import target_groups
    from sail.config import ConfigError
    good = tmp_path/'groups.yaml'; good.write_text("liver_only: {kind: multilabel, column: null, targets: [liver]}\n")
    cfg = make_config(check_paths=False, eval={'target_groups': str(good)})
    assert target_groups(cfg.eval) == {'liver_only': {'kind': 'multilabel', 'column': None, 'targets': ['liver']}}
    bad = tmp_path/'bad.yaml'; bad.write_text("x: {kind: regression, targets: [a]}\n")
    with pytest.raises(ConfigError, match="group 'x' needs kind"):
        target_groups(make_config(check_paths=False, eval={'target_groups': str(bad)}).eval)

def _objective_subgradient(X, y, coef, intercept, C=1.0, l1_ratio=0.5):
    "Independent optimality check of the binary balanced elastic-net logistic objective: max minimum-norm subgradient."
    from scipy.special import expit
    cw = len(y) / (2 * np.bincount(y)); s = cw[y]
    eta = X @ coef + intercept
    r = C * s * (expit(eta) - y)
    g = np.asarray(X.T @ r).ravel() + (1 - l1_ratio) * coef
    sub = np.where(coef != 0, np.abs(g + l1_ratio * np.sign(coef)), np.maximum(np.abs(g) - l1_ratio, 0))
    return max(sub.max(), abs(r.sum()))

def test_newton_solver_is_the_optimum_where_saga_stops_short():
    from sail.probes import enet_logistic, fit_probe
    from sklearn.preprocessing import StandardScaler
    g = np.random.default_rng(1)
    Z = g.normal(size=(600, 40)); X = StandardScaler().fit_transform(np.c_[Z, Z @ g.normal(size=(40, 260)) + 0.1 * g.normal(size=(600, 260))])
    y = (Z[:, 0] + Z[:, 1] * Z[:, 2] > 0.3).astype(int)                      # 300 collinear dense columns, like an embedding
    sol = enet_logistic(X, y, class_weight='balanced')
    assert sol.converged and _objective_subgradient(X, y, sol.coef[0], sol.intercept[0]) < 1e-5
    saga, conv = fit_probe(X, y, solver='saga')
    gap = _objective_subgradient(X, y, saga.coef_[0], saga.intercept_[0])
    assert gap > 1e-3, gap                      # saga stops short of it, even when its own tolerance calls it converged

def test_newton_solver_on_sparse_codes_matches_saga_run_to_the_end():
    from scipy.special import logsumexp, softmax
    from sail.probes import fit_probe, PROBE_PARAMS
    from sklearn.linear_model import LogisticRegression
    g = np.random.default_rng(2)
    X = sp.csr_matrix(np.where(g.random((500, 60)) < 0.1, g.random((500, 60)) * 3, 0).astype(np.float32))
    y = (X[:, 1].toarray().ravel() + X[:, 5].toarray().ravel() > 0.2).astype(int)
    clf, conv = fit_probe(X, y)
    ref = LogisticRegression(**(PROBE_PARAMS | dict(max_iter=50_000, tol=1e-10))).fit(X.astype(np.float64), y)  # float64: float32 saga stalls
    assert conv and np.abs(clf.coef_ - ref.coef_).max() < 1e-4 and np.abs(clf.intercept_ - ref.intercept_).max() < 1e-4
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    # three classes, two of them rare: saga is still far after 20,000 epochs, so check optimality itself
    y3 = np.digitize(X[:, 2].toarray().ravel() - X[:, 3].toarray().ravel(), [-0.1, 0.1])
    clf, conv = fit_probe(X, y3)
    Xd = X.toarray().astype(np.float64); cw = len(y3) / (3 * np.bincount(y3)); s = cw[y3]
    def objective(W, b):
        E = Xd @ W.T + b
        return (s * (logsumexp(E, 1) - E[np.arange(len(y3)), y3])).sum() + 0.25 * (W * W).sum() + 0.5 * np.abs(W).sum()
    R = s[:, None] * (softmax(Xd @ clf.coef_.T + clf.intercept_, axis=1) - np.eye(3)[y3])
    G = (Xd.T @ R).T + 0.5 * clf.coef_
    sub = np.where(clf.coef_ != 0, np.abs(G + 0.5 * np.sign(clf.coef_)), np.maximum(np.abs(G) - 0.5, 0))
    assert conv and sub.max() < 1e-5 and np.abs(R.sum(0)).max() < 1e-5          # the optimality conditions, checked here
    saga = LogisticRegression(**(PROBE_PARAMS | dict(max_iter=2_000))).fit(Xd, y3)
    assert objective(clf.coef_, clf.intercept_) < objective(saga.coef_, saga.intercept_)
    with pytest.raises(ValueError, match="solver must be one of"): fit_probe(X, y, solver='lbfgs')

def test_probe_solver_is_a_checked_setting(tmp_path, make_config):
    from sail.config import ConfigError
    assert make_config(check_paths=False).eval.probe_solver == 'newton'     # a clean clone has no data/TotalSegmentator
    with pytest.raises(ConfigError, match="'eval.probe_solver' must be one of \\['newton', 'saga'\\]"):
        make_config(check_paths=False, eval={'probe_solver': 'adam'})

def check_probes_step(src_run:Path, src_config:Path, tmp_path:Path):
    """Run the probes step on a copy of a finished run without its probes: the same bytes as the run's own, a rerun
    that refits nothing, every summary row as pandas computes it from the files, and `PROBES.load` reading them back."""
    import shutil, uuid, yaml
    from conftest import ROOT
    from sail.config import load_config
    from sail.train import trained_saes
    from sail.probes import run_probes, probes_artifact, PROBES, SUMMARY_COLUMNS
    name = f'_pytest_probes_{uuid.uuid4().hex[:8]}'
    run = ROOT/'runs'/name
    shutil.copytree(src_run, run, ignore=shutil.ignore_patterns('notebooks', 'sail-run.lock'))
    shutil.rmtree(run/'results'/'probes')
    p = tmp_path/f'{name}.yaml'; p.write_text(yaml.safe_dump(yaml.safe_load(src_config.read_text()) | {'name': name}))
    try:
        c = load_config(p)
        table = run_probes(c.paths, c.eval, c.compute)
        refs, out, want = trained_saes(c.paths), run/'results'/'probes', src_run/'results'/'probes'
        assert table.columns.tolist() == list(SUMMARY_COLUMNS) and len(table) == len(refs) > 0
        made = sorted(f.relative_to(out) for f in out.rglob('*') if f.suffix in ('.parquet', '.csv'))
        assert made == sorted(f.relative_to(want) for f in want.rglob('*') if f.suffix in ('.parquet', '.csv'))
        for rel in made: assert (out/rel).read_bytes() == (want/rel).read_bytes(), f"{rel} differs"
        records = {f: f.stat().st_mtime_ns for f in out.rglob('*.json')}
        again = run_probes(c.paths, c.eval, c.compute)
        assert {f: f.stat().st_mtime_ns for f in out.rglob('*.json')} == records   # nothing refitted or recommitted
        pd.testing.assert_frame_equal(again, table)
        for i, (ref, row) in enumerate(zip(refs, table.itertuples())):
            m = pd.read_parquet(out/ref.encoder/ref.variant/ref.config/'metrics.parquet')
            d = pd.read_parquet(out/ref.encoder/'dense'/'metrics.parquet')
            v = m[m.split == 'val'].merge(d[d.split == 'val'], on=['task', 'target'], suffixes=('_s', '_d'))
            assert (row.encoder, row.variant, row.config) == (ref.encoder, ref.variant, ref.config)
            assert row.n_targets == len(v)
            assert np.isclose(row.sparse_pct_of_dense, 100 * v.roc_auc_s.mean() / v.roc_auc_d.mean())
            loaded = PROBES.load(c.paths, ref)
            recovery = pd.read_parquet(probes_artifact(c.paths, ref).path('recovery.parquet'))
            pd.testing.assert_frame_equal(loaded.recovery, recovery)
            pd.testing.assert_frame_equal(pd.DataFrame([loaded.row])[list(SUMMARY_COLUMNS)],
                                          table.iloc[[i]].reset_index(drop=True))
    finally:
        shutil.rmtree(run, ignore_errors=True)

def test_run_probes_on_the_smoke_run(smoke_run, tmp_path):
    "The probes step, rerun on a copy of the smoke run (see `check_probes_step`)."
    check_probes_step(smoke_run.run, smoke_run.config, tmp_path)
