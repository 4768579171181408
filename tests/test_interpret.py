"Interpretation (reference steps 10-12): retrieval rules, the judge parser, the cache, the matchers, and the transformers paths."
import json, shutil
import numpy as np, pandas as pd, pytest, scipy.sparse as sp, torch
from sail.config import load_config
from sail.split import scan_index
from sail.retrieval import fingerprints, k_sweep, top_distinct, Bank, sweep_similarity, SIM_DECIMALS
from sail.autointerp import (parse_ranking, GenerationCache, MetadataBackend, describe_prompt, judge_prompt, sample_records,
                             AUTOINTERP, AutointerpSettings, tiny_gemma3, autointerp_artifact)
from sail.language import EmbeddingMatcher, parse_feature_choice, LANGUAGE
from sail.ranking import selected_configs
from conftest import ROOT, SMOKE_YAML

# ---------------------------------------------------------------- fingerprint retrieval

def _scans():
    "Rows: the reference (CT s0001 axial), its coronal slice, MRI s0001 (another patient), CT s0002, CT s0003."
    rows = pd.DataFrame(dict(modality=['ct', 'ct', 'mri', 'ct', 'ct'], image_id=['s0001', 's0001', 's0001', 's0002', 's0003'],
                             plane=['axial', 'coronal', 'axial', 'axial', 'axial']))
    codes = sp.csr_matrix(np.array([[3.0, 2.0, 1.0, 0.0],
                                    [3.0, 2.0, 1.0, 0.0],      # identical to the reference, but the same scan
                                    [2.9, 2.1, 1.0, 0.0],      # same image id, other modality: a different scan
                                    [1.0, 2.0, 3.0, 0.0],
                                    [0.0, 0.0, 0.0, 5.0]], np.float32))
    return rows, codes

def test_fingerprint_exclusion_rules():
    rows, codes = _scans()
    X = codes.toarray() + 0.01
    per_ref, hits = k_sweep(codes, X, scan_index(rows), np.array([0]), [3], top_n=3)
    got = hits[(hits.method == 'sparse') & (hits.k == 3)].sort_values('rank').row.tolist()
    assert 1 not in got                                  # the same scan in the other plane is excluded
    assert got[0] == 2                                   # the same image id in MRI is another scan, and the best match
    for m in ('dense', 'dense_fingerprint'): assert 1 not in hits[hits.method == m].row.tolist()

def test_effective_k_and_ties():
    rows, codes = _scans()
    idx, vals, k_eff = fingerprints(codes, 5)
    assert k_eff.tolist() == [3, 3, 3, 3, 1] and idx[4].tolist() == [3, -1, -1, -1, -1]   # never zero-valued fillers
    always = np.array([True, False, False, False])
    idx, _, k_eff = fingerprints(codes, 2, always)
    assert idx[0].tolist() == [1, 2] and k_eff.tolist() == [2, 2, 2, 2, 1]                 # always-active features left out
    tie = sp.csr_matrix(np.array([[1.0, 1.0, 1.0]], np.float32))
    assert fingerprints(tie, 2)[0].tolist() == [[0, 1]]                                     # ties by feature index
    scores = torch.tensor([[0.5, 0.7, 0.7, 0.7, 0.2]])
    assert top_distinct(scores, np.array([0, 1, 2, 3, 4]), 3)[0].tolist() == [[1, 2, 3]]   # equal scores in candidate order

def _brute_force(codes, scan, ref, k, n):
    "Spec §11 written out: cosine on the reference's k fingerprint features (1/(1+|Δ|) for one), full stable sort, walk."
    row = codes[ref].toarray().ravel()
    feats = [f for f in np.argsort(-row, kind='stable')[:k] if row[f] > 0]
    sub = codes[:, feats].toarray().astype(np.float64); q = row[feats].astype(np.float64)
    if len(feats) == 1: sim = 1 / (1 + np.abs(sub[:, 0] - q[0]))
    else:
        den = np.linalg.norm(sub, axis=1) * np.linalg.norm(q)
        sim = np.divide(sub @ q, den, out=np.zeros(len(sub)), where=den > 0)
    sim = np.round(sim, SIM_DECIMALS)
    seen, out = {scan[ref]}, []
    for j in np.argsort(-sim, kind='stable'):
        if scan[j] in seen: continue
        seen.add(scan[j]); out.append(sim[j])
        if len(out) == n: break
    return out

def test_k_sweep_matches_the_definition():
    g = np.random.default_rng(5)
    codes = sp.csr_matrix(np.where(g.random((400, 30)) < 0.2, g.integers(1, 6, (400, 30)), 0).astype(np.float32))
    X = g.normal(size=(400, 8)).astype(np.float32)
    scan = np.arange(400) // 9
    refs = np.array([0, 17, 123, 399])
    _, hits = k_sweep(codes, X, scan, refs, [1, 2, 5], top_n=4, batch_size=3)
    for k in (1, 2, 5):
        for r in refs:
            ours = hits[(hits.method == 'sparse') & (hits.k == k) & (hits.reference == r)].sort_values('rank')
            np.testing.assert_allclose(ours.similarity.to_numpy(), _brute_force(codes, scan, r, k, 4), atol=2e-6)
            assert len(set(scan[ours.row])) == len(ours) and scan[r] not in set(scan[ours.row])

def test_dense_fingerprint_baseline_is_cosine_at_every_k():
    """Spec §11's dense-fingerprint baseline: the reference's k dimensions of largest |value|, cosine over them, at k = 1 too
    (there ±1 by sign agreement, ties in candidate order) -- never the 1/(1+|Δ|) rule of sparse one-feature fingerprints."""
    g = np.random.default_rng(8)
    X = g.normal(size=(300, 12)).astype(np.float32); X[::7, :] = 0.0
    scan, refs = np.arange(300) // 5, np.array([3, 150, 299])
    codes = sp.csr_matrix(np.abs(X))
    _, hits = k_sweep(codes, X, scan, refs, [1, 4], top_n=4, methods=('dense_fingerprint',))
    for k in (1, 4):
        for r in refs:
            dims = np.argsort(-np.abs(X[r]), kind='stable')[:k]
            sub, q = X[:, dims].astype(np.float64), X[r, dims].astype(np.float64)
            den = np.linalg.norm(sub, axis=1) * np.linalg.norm(q)
            sim = np.round(np.divide(sub @ q, den, out=np.zeros(len(sub)), where=den > 0), SIM_DECIMALS)
            seen, want = {scan[r]}, []
            for j in np.argsort(-sim, kind='stable'):
                if scan[j] not in seen: seen.add(scan[j]); want.append(j)
                if len(want) == 4: break
            ours = hits[(hits.k == k) & (hits.reference == r)].sort_values('rank')
            assert ours.row.tolist() == want, (k, r)
            if k == 1: assert set(ours.similarity.round(6)) <= {-1.0, 0.0, 1.0}

def test_streamed_search_equals_full_matrix():
    g = np.random.default_rng(1)
    codes = sp.csr_matrix(np.where(g.random((900, 50)) < 0.15, g.random((900, 50)), 0).astype(np.float32))
    scan = np.arange(900) // 13
    fi, fv, _ = fingerprints(codes[:20], 10)
    from sail.retrieval import sweep_retrieve
    streamed = sweep_retrieve(Bank(codes, chunk=128), fi, fv, [1, 3, 10], scan, 5, scan[:20])
    for (k, _, sim), (_, _, rows, _) in zip(sweep_similarity(Bank(codes), fi, fv, [1, 3, 10]), streamed):
        assert rows.tolist() == top_distinct(sim, scan, 5, scan[:20])[0].tolist()

def _retrieval_step_checks(cfg):
    "The retrieval step on a finished run, checked against the definitions recomputed here with NumPy."
    from sail.retrieval import RETRIEVAL, run_retrieval, retrieve_config, split_inputs, grid_data, retrieval_dir
    shutil.rmtree(retrieval_dir(cfg.paths), ignore_errors=True)
    refs = selected_configs(cfg.paths, cfg.interpret)
    summaries = run_retrieval(cfg.paths, cfg.retrieval, cfg.interpret, cfg.compute)
    made = sorted(set(zip(summaries.encoder, summaries.variant, summaries.config)))
    assert made == sorted((r.encoder, r.variant, r.config) for r in refs)
    ref = refs[0]; folder = RETRIEVAL.folder(cfg.paths, ref)
    again = retrieve_config(cfg.paths, ref, cfg.retrieval, 'cpu')                  # the pure compute gives the files
    pd.testing.assert_frame_equal(pd.read_parquet(folder/'per_reference.parquet'), again.per_reference)
    assert json.loads((folder/'retrieval.json').read_text()) == again.info
    d = split_inputs(cfg.paths, ref, cfg.retrieval.split)
    Xn = d.dense / np.linalg.norm(d.dense, axis=1, keepdims=True)
    pos = pd.Series(np.arange(len(d.rows)), index=d.rows.slice_id.to_numpy()); scan = scan_index(d.rows)
    hits, per_ref = pd.read_parquet(folder/'retrieved.parquet'), pd.read_parquet(folder/'per_reference.parquet')
    a, b = pos[hits.reference_slice_id].to_numpy(), pos[hits.slice_id].to_numpy()
    assert np.allclose((Xn[a] * Xn[b]).sum(1), hits.dense_cosine, atol=1e-5)           # dense cosine, recomputed
    assert (scan[a] != scan[b]).all()                                                    # never the reference's scan
    want = hits.groupby(['method', 'k', 'reference_slice_id']).dense_cosine.mean()
    got = per_ref.set_index(['method', 'k', 'reference_slice_id']).quality_mean.loc[want.index]
    assert np.allclose(got, want, atol=1e-6)                                             # quality = mean of the cosines
    assert len(per_ref.reference_slice_id.unique()) == min(cfg.retrieval.n_references, len(d.rows))
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    rerun = run_retrieval(cfg.paths, cfg.retrieval, cfg.interpret, cfg.compute)      # every configuration fresh
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    pd.testing.assert_frame_equal(rerun, summaries, check_dtype=False)                 # read back from summary.csv
    grid = grid_data(cfg.paths, cfg.retrieval, refs[:1])
    fig_rows = split_inputs(cfg.paths, ref, cfg.retrieval.figure_split).rows
    assert set(grid.reference) | set(grid.slice_id.dropna()) <= set(fig_rows.slice_id)
    assert (grid[grid.kind == 'feature'].groupby('reference').size() <= cfg.retrieval.figure_k).all()

@pytest.mark.xdist_group('smoke')
def test_retrieval_step_on_a_finished_run(run_copy):
    "run_retrieval writes what retrieve_config computes, true to the definitions; a rerun finds every SAE fresh."
    _retrieval_step_checks(run_copy())

# ---------------------------------------------------------------- the judge parser and the cache

@pytest.mark.parametrize('reply,want', [
    ('C, A, E, B, D', 'CAEBD'),
    ('C,A,E,B,D', 'CAEBD'),
    ('Looking at the metadata, the best is C.\n\nRanking: C, A, E, B, D', 'CAEBD'),      # preamble
    ('c, a, e, b, d', 'CAEBD'),                                                          # lower case
    ('**C > A > E > B > D**', 'CAEBD'),                                                   # markdown
    ('Final answer: C A E B D.', 'CAEBD'),
    ('  C, A, E, B, D  \n\n', 'CAEBD'),                                                   # trailing blank lines
    ('C, A, E, B, A', None),                                                              # repeated letter
    ('C, C, C, C, C', None),
    ('C, A, E, B', None),                                                                 # one missing
    ('C, A, E, B, D, F', None),                                                           # letter out of range
    ('C, A, E, B, D (C names the liver)', None),                                          # explanation on the line
    ('C, A, E, B, D\nC is the most specific description.', None),                        # explanation after it
    ('A clear BEst choice is C, then A, E, B and D', None),                               # letters inside words
    ('I cannot rank these.', None)])
def test_judge_parser_adversarial(reply, want):
    got = parse_ranking(reply, 5)
    assert (''.join(got) if got else None) == want

def test_generation_cache_hits_and_nothing_half_written(tmp_path):
    recs = sample_records(pd.DataFrame(dict(slice_id=['a', 'b'], modality='ct', plane='axial', gender='f', age=[50.0, 60], age_bin=['40-60', '60-80'],
                                            pathology='no_pathology', liver=True)))
    calls = []
    class Counting(MetadataBackend):
        def complete(self, prompt): calls.append(prompt.task); return super().complete(prompt)
    cache = GenerationCache(tmp_path/'c', context='x')
    p = describe_prompt(recs, seed=3)
    assert cache.complete(Counting(), p) == cache.complete(Counting(), p) and calls == ['describe']
    assert (cache.hits, cache.misses) == (1, 1)
    cache.complete(Counting(), judge_prompt(recs, ['a', 'b', 'c', 'd', 'e'], seed=3)); assert len(calls) == 2
    class Failing(MetadataBackend):
        def complete(self, prompt): raise RuntimeError('model crashed')
    with pytest.raises(RuntimeError): cache.complete(Failing(), describe_prompt(recs, seed=4))
    files = list((tmp_path/'c').rglob('*'))
    assert all(f.suffix == '.json' for f in files if f.is_file()) and len([f for f in files if f.is_file()]) == 2   # no partial file

# ---------------------------------------------------------------- matchers

def test_embedding_matcher_ranks_the_obvious_description_first():
    descs = ['Sagittal MRI of the lumbar spine', 'Axial CT of the abdomen (liver, kidneys) in an elderly patient',
             'Coronal CT of the thorax and rib cage', 'Axial MRI of the brain', 'Coronal CT of the bony pelvis and hips']
    m = EmbeddingMatcher()
    for query, want in [('Axial CT of the abdomen in an elderly patient', 1), ('Sagittal MRI of the spine', 0),
                        ('Coronal CT of the chest and ribs', 2), ('Axial MRI of the head and brain', 3), ('Coronal CT of the pelvis', 4)]:
        assert m.match(query, descs, 2)[0][0] == want, query

def test_llm_choice_parser():
    assert parse_feature_choice('```json\n{"feature_indices": [2, 5, 1]}\n```', 3, 5) == [2, 5, 1]
    for bad in ['{"feature_indices": [2, 5]}', '{"feature_indices": [0, 1, 2]}', '{"features": [1, 2, 3]}', '{"feature_indices": [1, 2, true]}', 'no json']:
        assert parse_feature_choice(bad, 3, 5) is None

# ---------------------------------------------------------------- the transformers paths, end to end on a finished run

@pytest.fixture
def run_copy(smoke_run, tmp_path):
    "A copy of the smoke run under another name, so that changing backends does not touch the shared run."
    name = f'{smoke_run.name}_copy_{tmp_path.name}'
    shutil.copytree(smoke_run.run, ROOT/'runs'/name, ignore=shutil.ignore_patterns('notebooks', 'explorers', 'thumbs'))
    def config(**sections):
        text = smoke_run.config.read_text().replace(f'name: {smoke_run.name}', f'name: {name}')
        text = '\n'.join(l for l in text.splitlines() if not any(l.startswith(f'{s}:') for s in sections))
        import yaml
        p = tmp_path/'copy.yaml'; p.write_text(text + '\n' + (yaml.safe_dump(sections) if sections else ''))
        return load_config(p)
    yield config
    shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

@pytest.mark.xdist_group('smoke')
def test_transformers_autointerp_reports_parse_failures(run_copy, tmp_path):
    vlm = tiny_gemma3(tmp_path/'vlm')                                       # real Gemma 3 classes, random weights, no download
    cfg = run_copy(autointerp=dict(backend='transformers', model=str(vlm), n_features=3, judge_retries=1, max_new_tokens=12, judge_max_new_tokens=8))
    ref, settings = selected_configs(cfg.paths, cfg.interpret)[0], AutointerpSettings(cfg.autointerp, cfg.eval)
    m = AUTOINTERP.make(cfg.paths, ref, settings, cfg.device, force=True).metrics
    assert m['describer'] == f'transformers:{vlm}' and m['judge'] == f'transformers:{vlm}'
    assert m['n_features'] == 3 and m['n_parse_failures'] == 3 and m['n_evaluated'] == 0     # noise never parses ...
    d = pd.read_parquet(autointerp_artifact(cfg.paths, ref).path('descriptions.parquet'))
    assert d.true_rank.isna().all() and (d.attempts == 2).all() and not d.parse_ok.any()    # ... and is never given a random rank
    assert m['cache_misses'] > 0
    again = AUTOINTERP.make(cfg.paths, ref, settings, cfg.device, force=True).metrics      # a rerun costs no generation
    assert again['cache_misses'] == 0 and again['cache_hits'] == m['cache_hits'] + m['cache_misses']

@pytest.mark.xdist_group('smoke')
def test_a_feature_without_enough_distractors_is_a_recorded_failure_not_a_judged_one(run_copy):
    cfg = run_copy(autointerp=dict(backend='metadata', n_features=4, min_active=10**9))   # no feature is an eligible distractor
    ref = selected_configs(cfg.paths, cfg.interpret)[0]
    m = AUTOINTERP.make(cfg.paths, ref, AutointerpSettings(cfg.autointerp, cfg.eval), cfg.device, force=True).metrics
    assert m['n_evaluated'] == m['n_features'] == 0 and m['n_failed'] == 4                     # every chosen feature failed, and says why
    assert all('the judge needs 4 distractors' in f['reason'] for f in m['failures'])
    assert len(pd.read_parquet(autointerp_artifact(cfg.paths, ref).path('descriptions.parquet'))) == 0   # nothing judged against fewer options

@pytest.mark.xdist_group('smoke')
def test_llm_matcher_failures_are_recorded(run_copy, tmp_path):
    llm = tiny_gemma3(tmp_path/'llm', vision=False)
    cfg = run_copy(language=dict(matchers=['llm'], llm_model=str(llm), retries=2, max_new_tokens=10, slices_per_scan=3))
    ref = selected_configs(cfg.paths, cfg.interpret)[0]
    ev = LANGUAGE.make(cfg.paths, ref, cfg.language, cfg.device, force=True).evaluation
    side = json.loads((ROOT/'runs'/cfg.name/'results'/'language'/ref.encoder/ref.variant/ref.config/'language.json').read_text())
    assert (~ev.matched).all() and len(side['failures']) == len(ev)                           # every query failed, and says so
    assert all('no valid feature choice' in f['reason'] or 'no described feature' in f['reason'] for f in side['failures'])

def test_torch_sparse_engine_matches_scipy():
    "The engine used on GPUs (torch sparse CSR), run on the CPU, retrieves exactly what scipy's does."
    from sail.retrieval import sweep_retrieve
    g = np.random.default_rng(2)
    codes = sp.csr_matrix(np.where(g.random((700, 40)) < 0.2, g.random((700, 40)), 0).astype(np.float32))
    scan = np.arange(700) // 11
    fi, fv, _ = fingerprints(codes[:16], 8)
    a = sweep_retrieve(Bank(codes, chunk=200, engine='scipy'), fi, fv, [1, 2, 8], scan, 5, scan[:16])
    b = sweep_retrieve(Bank(codes, chunk=200, engine='torch'), fi, fv, [1, 2, 8], scan, 5, scan[:16])
    for (_, _, ra, sa), (_, _, rb, sb) in zip(a, b):
        assert ra.tolist() == rb.tolist() and np.allclose(sa.numpy(), sb.numpy(), equal_nan=True)

# ---------------------------------------------------------------- the metadata describer with grounding

def test_metadata_describer_names_the_organ_a_grounded_feature_detects():
    "A grounded configuration's descriptions say where each feature's maps lie and name the organ when AP >= 0.3."
    import dataclasses
    from sail.steps import lesson_run, write_field
    from sail.codes import write_codes
    from sail.monosemanticity import score_all
    from sail.grounding import GROUNDING
    lesson = lesson_run(); ref, paths = lesson.refs[0], lesson.paths
    write_codes(paths, lesson.cfg.sae); score_all(paths, lesson.cfg.eval)
    small = dataclasses.replace(lesson.cfg.autointerp, backend='metadata', n_features=6)
    settings = AutointerpSettings(small, lesson.cfg.eval, lesson.cfg.grounding)
    plain = AUTOINTERP.make(paths, ref, settings, 'cpu').descriptions
    assert not plain.description.str.contains('grounding on|its map on').any()          # no grounding: unchanged
    D = int(plain.feature.max()) + 64
    ap = np.where(np.arange(D) % 2 == 0, 0.62, 0.12)                # even features detect the liver, odd ones do not
    feats = pd.DataFrame(dict(feature=np.arange(D), best_organ='liver', ap=ap, mass_inside=0.5, n_cells=10,
                              top_class_1='liver', top_share_1=0.5, top_class_2='spleen', top_share_2=0.3,
                              top_class_3='background', top_share_3=0.2))
    art = GROUNDING.artifact(paths, ref); art.folder.mkdir(parents=True, exist_ok=True)
    write_field(art.path('features.parquet'), feats)
    write_field(art.path('baselines.parquet'), pd.DataFrame(dict(baseline=['x'])))
    write_field(art.path('summary.json'), dict(mAP=0.5))
    art.commit(GROUNDING.inputs(paths, ref, lesson.cfg.grounding))
    a = AUTOINTERP.artifact(paths, ref)
    assert not a.fresh(AUTOINTERP.inputs(paths, ref, settings))      # the grounding makes the descriptions stale
    got = AUTOINTERP.make(paths, ref, settings, 'cpu').descriptions.set_index('feature').description
    assert len(got) == len(plain)
    for f, d in got.items():
        assert '(its map on liver, spleen)' in d, d
        assert d.endswith(', grounding on the liver (AP 0.62)') == (f % 2 == 0), (f, d)
    strict = AutointerpSettings(small, lesson.cfg.eval, dataclasses.replace(lesson.cfg.grounding, ap_threshold=0.7))
    hi = AUTOINTERP.make(paths, ref, strict, 'cpu').descriptions
    assert not hi.description.str.contains('grounding on').any()     # AP 0.62 < 0.7: no organ named
