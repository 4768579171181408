"""Grounding (nbs/11a_grounding): the metrics against scikit-learn and hand computations, the grid geometry against
independent loops, the seeded stratified sample, and the exact split of the pre-activation for a mean-pooled
encoder."""
import dataclasses
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score
from sail.grounding import (overlap_matrix, to_cells, label_cells, positive_cells, concat_cells, score_cells,
                            feature_table, grounding_summary, purity_at, grounding_sample, slice_feature_maps)


def _dense_problem(seed, S=25, P=9, K=4, F=6):
    g = np.random.default_rng(seed)
    labels = g.integers(0, K, (S, P))
    dense = np.round(g.normal(0, 1, (S, F, P)), 1).astype(np.float32)   # rounding: many ties
    dense[g.random((S, F)) < 0.4] = 0
    return labels, dense


@pytest.mark.parametrize('seed', range(5))
def test_ap_equals_sklearn_on_dense_arrays(seed):
    labels, dense = _dense_problem(seed)
    S, F, P = dense.shape; K = 4
    sc = concat_cells([positive_cells(s, np.arange(F), dense[s]) for s in range(S)])
    for chunk in (3, 10_000):
        res = score_cells(sc, labels.ravel(), F, K, top=5, chunk=chunk)
        y = labels.ravel()
        for f in range(F):
            score = np.clip(dense[:, f], 0, None).ravel()
            for c in range(K):
                assert res.ap[f, c] == pytest.approx(average_precision_score(y == c, score), abs=1e-12)


def test_ap_hand_computed():
    # 4 cells, class 1 at cells 0 and 2; the feature scores 0.9, 0.8, 0, 0.
    # thresholds: 0.9 -> P 1, R 1/2; 0.8 -> P 1/2, R 1/2; 0 (the tie) -> P 1/2, R 1: AP = 1/2*1 + 1/2*1/2 = 0.75
    sc = positive_cells(0, [0], np.array([[0.9, 0.8, 0.0, 0.0]]))
    res = score_cells(sc, np.array([1, 0, 1, 0]), 1, 2)
    assert res.ap[0, 1] == pytest.approx(0.75)
    assert res.ap[0, 0] == pytest.approx(0.5 * 0 + 0.5 * 0.5 + 0.5 * 0.5)  # background: 0 at 0.9, 1/2 at 0.8, then tie
    # a tie at the top: both positive cells at 0.5 with one negative -> P 2/3 at recall 1
    res = score_cells(positive_cells(0, [0], np.array([[0.5, 0.5, 0.5, 0]])), np.array([1, 0, 1, 0]), 1, 2)
    assert res.ap[0, 1] == pytest.approx(2 / 3)


def test_feature_table_and_summary_hand_computed():
    # feature 0 fires on class 1's two cells only; feature 1 fires on a background cell
    sc = concat_cells([positive_cells(0, [0, 1], np.array([[2.0, 0, 1.0, 0], [0, 3.0, 0, 0]])),
                       positive_cells(1, [], np.zeros((0, 4)))])
    res = score_cells(sc, np.array([1, 0, 1, 2, 0, 0, 0, 0]), 2, 3, top=2)   # two slices of 4 cells
    ft = feature_table(res, names=lambda v: ['bg', 'a', 'b'][v])
    assert ft.best_organ.tolist()[0] == 'a' and ft.ap[0] == 1.0 and ft.mass_inside[0] == 1.0
    assert ft.top_class_1[1] == 'bg' and ft.top_share_1[1] == 1.0
    gs = grounding_summary(res, pd.Series([0.9, 0.8]), yield_at=(1, 2))
    # class a: best AP 1 (feature 0); class b: no feature fires on it -> its prevalence 1/8.
    # feature 1's best AP is class a's prevalence 2/8 < 0.3, so Yield@2 is 1/2
    assert gs['mAP'] == pytest.approx((1 + 0.125) / 2)
    assert gs['cov_at_0.3'] == 0.5 and gs['yield_at_1'] == 1.0 and gs['yield_at_2'] == 0.5
    # purity: class a's best feature 0 has top cells [a, a] -> 2/2; class b's best (feature 0, first of a tie) too
    assert gs['purity_at_2'] == 1.0


def test_purity_is_saevs_modal_share():
    tl = np.array([[3, 3, 0, 1], [2, -1, -1, -1]])
    assert purity_at(tl, np.array([0])) == 0.5
    assert purity_at(tl, np.array([0, 1])) == pytest.approx((0.5 + 0.25) / 2)


def test_to_cells_against_loops():
    g = np.random.default_rng(0)
    for h, cells in ((7, 16), (32, 16), (5, 3)):
        m = g.normal(size=(h, h))
        got = to_cells(m, cells)
        sub = np.repeat(np.repeat(m / cells ** 2, cells, 0), cells, 1)  # (h*cells)² sub-squares, area shares
        want = sub.reshape(cells, h, cells, h).sum((1, 3))
        assert np.allclose(got, want, atol=1e-5)
        assert overlap_matrix(h, cells).sum(0) == pytest.approx(np.ones(h))


def test_label_cells_against_loops():
    g = np.random.default_rng(1)
    for rows, cols, cells in ((6, 10, 4), (12, 7, 5), (16, 16, 16)):
        lab = g.integers(0, 4, (rows, cols))
        side = max(rows, cols); top, left = (side - rows) // 2, (side - cols) // 2
        sq = np.zeros((side, side), int); sq[top:top + rows, left:left + cols] = lab
        want = []
        for i in range(cells):
            for j in range(cells):
                votes = [sq[r, c] for r in range(side) for c in range(side)
                         if int((r + 0.5) * cells / side) == i and int((c + 0.5) * cells / side) == j]
                counts = np.bincount(votes, minlength=4)
                want.append(int(np.argmax(counts)))
        assert label_cells(lab, cells, 4).tolist() == want


def test_sample_is_seeded_and_stratified():
    n = 400
    rows = pd.DataFrame(dict(slice_id=[f's{i}' for i in range(n)], modality=np.where(np.arange(n) < 200, 'ct', 'mri'),
                             image_id=np.repeat(np.arange(8).astype(str), 50),
                             plane=np.tile(['axial', 'sagittal'], 200),
                             split=np.repeat(['val', 'test', 'train', 'val'], 100)))
    a, b = grounding_sample(rows, 60, seed=5), grounding_sample(rows, 60, seed=5)
    assert a.slice_id.tolist() == b.slice_id.tolist() and len(a) == 60
    assert set(a.split) <= {'val', 'test'}
    per = a.groupby(['modality', 'image_id', 'plane']).size()
    assert len(per) == 12 and per.min() == 5 and per.max() == 5   # 12 strata of 25 slices: 5 each
    assert grounding_sample(rows, 60, seed=6).slice_id.tolist() != a.slice_id.tolist()


def test_mean_pooled_encoder_maps_sum_to_the_preactivation(tmp_path):
    from sail.steps import lesson_run
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    from sail.sae import MatryoshkaSAE
    from sail.train import save_sae, SAERef
    from sail.slices import load_slices
    lesson = lesson_run()
    enc = build_encoder(EncoderConfig('random:efficientnet-lite0', image_size=96), local_files_only=True)
    sae = MatryoshkaSAE(enc.dim, [8, 32], [2, 4], seeds=3)
    with torch.no_grad():
        sae.b_enc[0] = torch.randn(32) * 0.01; sae.b_dec[0] = torch.randn(enc.dim) * 0.01; sae.theta[:] = 0.0
    folder = save_sae(sae, 0, tmp_path/'sae', {})
    ref = SAERef('random-efficientnet-lite0', 'paper', 'test', folder)
    rows = load_slices(lesson.paths.data, ['slice_id', 'image_path', 'modality', 'image_id']).iloc[:3]
    grid = slice_feature_maps(lesson.paths, ref, enc, rows, grid=16)
    full = slice_feature_maps(lesson.paths, ref, enc, rows, features=list(range(32)), grid=16)
    const = (sae.b_enc[0] - sae.W[0] @ sae.b_dec[0]).detach().numpy()
    from sail.slices import slice_image
    with torch.inference_mode():
        x = torch.stack([enc.preparer(np.asarray(slice_image(lesson.paths.data, p)), None) for p in rows.image_path])
        e = enc(x).float()
        z = sae.preacts(torch.nn.functional.normalize(e, dim=-1))[0].numpy()
    for i, (g, f) in enumerate(zip(grid, full)):
        assert len(g.features) > 0 and g.kind == 'mean'
        assert np.allclose(g.maps.sum((1, 2)), z[i, g.features] - const[g.features], atol=1e-5)
        inactive = f.codes == 0
        assert inactive.any() and np.abs(f.maps[inactive]).max() == 0.0
    pix = slice_feature_maps(lesson.paths, ref, enc, rows.iloc[:1])[0]
    img = np.asarray(slice_image(lesson.paths.data, rows.image_path.iloc[0]))
    assert pix.maps.shape[1:] == img.shape


def test_approximate_encoder_maps_are_named_and_zero_where_inactive(tmp_path):
    from sail.steps import lesson_run
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    from sail.sae import MatryoshkaSAE
    from sail.train import save_sae, SAERef
    from sail.slices import load_slices
    lesson = lesson_run()
    enc = build_encoder(EncoderConfig('random:dinov3', arch='tiny', image_size=64), local_files_only=True)
    sae = MatryoshkaSAE(enc.dim, [8, 32], [2, 4], seeds=3)
    with torch.no_grad(): sae.theta[:] = 0.0
    ref = SAERef('random-dinov3', 'paper', 'test', save_sae(sae, 0, tmp_path/'sae', {}))
    rows = load_slices(lesson.paths.data, ['slice_id', 'image_path']).iloc[:2]
    maps = slice_feature_maps(lesson.paths, ref, enc, rows, features=list(range(32)), grid='backbone')
    for m in maps:
        assert m.kind == 'approximate' and m.maps.shape == (32, 4, 4)
        assert (m.codes == 0).any() and np.abs(m.maps[m.codes == 0]).max() == 0.0


def test_step_runs_every_configuration_and_is_fresh_after(tmp_path):
    from sail.steps import lesson_run
    from sail.config import GroundingConfig
    from sail.grounding import GROUNDING, GROUNDING_COLUMNS, organ_features
    lesson = lesson_run()
    settings = dataclasses.replace(GroundingConfig(), slices=30, deletion_slices=3, deletion_features=2)
    run = GROUNDING.run(lesson.paths, lesson.refs, settings, lesson.cfg.compute)
    assert len(run.table) == len(lesson.refs)
    assert set(GROUNDING_COLUMNS) - {'randomisation_spearman'} <= set(run.table.columns)
    ref = lesson.refs[0]
    rec = GROUNDING.artifact(lesson.paths, ref).record()
    again = GROUNDING.run(lesson.paths, lesson.refs, settings, lesson.cfg.compute)
    assert GROUNDING.artifact(lesson.paths, ref).record()['created'] == rec['created']      # fresh: not redone
    assert again.table.mAP.tolist() == run.table.mAP.tolist()
    fs = GROUNDING.load(lesson.paths, ref).features
    assert {'feature', 'best_organ', 'ap', 'mass_inside', 'top_class_1', 'top_share_1'} <= set(fs.columns)
    best = fs.dropna(subset=['ap']).best_organ.mode()[0]
    assert (organ_features(lesson.paths, ref, best).best_organ == best).all()
    from sail.grounding import grounding_sample_of
    from sail.embed import slice_windows
    rows = grounding_sample_of(lesson.paths, ref.encoder, settings).rows    # what an encoder reading HU needs again
    windows = slice_windows(rows)                                          # for the deletion check and the maps
    assert len(windows) == len(rows) and any(w is not None for w in windows) == (rows.modality == 'ct').any()


def test_slab_encoder_maps_sum_to_the_preactivation_of_its_slab(tmp_path):
    """A 2.5-D encoder's maps: each slice goes through with its neighbours as the embed step sends them. The slab is
    rebuilt here by hand (same scan and plane, slice_index ± 1, the stack's end slice repeated; each neighbour in its
    own CT window), and the maps must add up to the pre-activation of that input."""
    from PIL import Image
    from sail.steps import lesson_run
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    from sail.sae import MatryoshkaSAE
    from sail.train import save_sae, SAERef
    from sail.slices import load_slices
    torch.manual_seed(0)
    lesson = lesson_run()
    enc = build_encoder(EncoderConfig('random:astra-ct', image_size=64, slab=1), local_files_only=True)
    assert enc.slab == 1 and enc.uses_window
    sae = MatryoshkaSAE(enc.dim, [8, 32], [2, 4], seeds=3)
    with torch.no_grad(): sae.b_enc[0] = torch.randn(32) * 0.01; sae.b_dec[0] = torch.randn(enc.dim) * 0.01; sae.theta[:] = 0.0
    ref = SAERef('random-astra-ct', 'paper', 'test', save_sae(sae, 0, tmp_path/'sae', {}))
    table = load_slices(lesson.paths.data)
    ct = table[table.modality == 'ct']
    stack = ct[(ct.image_id == ct.image_id.iloc[0]) & (ct.plane == 'axial')]
    lo, hi = stack.slice_index.min(), stack.slice_index.max()
    rows = stack[stack.slice_index.isin([lo, (lo + hi) // 2])].sort_values('slice_index')   # an edge and a middle slice

    def by_hand(r):
        out = []
        for k in np.clip(r.slice_index + np.arange(-1, 2), lo, hi):
            n = stack[stack.slice_index == k].iloc[0]
            with Image.open(lesson.paths.data/n.image_path) as im: img = np.asarray(im.convert('L'))
            out.append(enc.preparer(img, (n.window_centre - n.window_width / 2, n.window_centre + n.window_width / 2)))
        return torch.stack(out)
    x = torch.stack([by_hand(r) for r in rows.itertuples()])
    assert not torch.equal(x[1, 0], x[1, 1])                       # the neighbours are other slices
    with torch.inference_mode(): z = sae.preacts(torch.nn.functional.normalize(enc(x).float(), dim=-1))[0].numpy()
    const = (sae.b_enc[0] - sae.W[0] @ sae.b_dec[0]).detach().numpy()
    maps = slice_feature_maps(lesson.paths, ref, enc, rows, features=list(range(32)), grid='backbone')
    for i, m in enumerate(maps):
        active = m.codes > 0
        assert active.any() and m.kind == 'mean' and m.maps.shape == (32, 2, 2)
        assert np.allclose(m.maps[active].sum((1, 2)), z[i, active] - const[active], atol=1e-5)
        assert np.abs(m.maps[~active]).max() == 0.0
    # a query's stack: each slice's slab from the stack itself (as `embed_images` embeds it), the same exact split
    from types import SimpleNamespace
    from sail.embed import embed_images
    from sail.query import query_maps
    from sail.codes import compute_codes
    four = stack.sort_values('slice_index').iloc[:4]
    window = (four.window_centre.iloc[0] - four.window_width.iloc[0] / 2, four.window_centre.iloc[0] + four.window_width.iloc[0] / 2)
    images = []
    for q in four.image_path:
        with Image.open(lesson.paths.data/q) as im: images.append(np.asarray(im.convert('L')))
    X = embed_images(enc, images, [window] * 4)
    with torch.inference_mode(): zq = sae.preacts(torch.nn.functional.normalize(torch.from_numpy(X), dim=-1))[0].numpy()
    codes = compute_codes(sae, X).matrix(32)
    qmaps = query_maps(SimpleNamespace(encoder=enc, device='cpu', sae=sae),
                       SimpleNamespace(images=images, window=window, indices=np.arange(4)), codes,
                       [codes[i].indices for i in range(4)], batch_size=3)
    assert qmaps is not None and len(qmaps) == 4
    for i, m in enumerate(qmaps):
        assert len(m.features) and np.allclose(m.maps.sum((1, 2)), zq[i, m.features] - const[m.features], atol=1e-5)


def test_step_grounds_a_slab_encoder_whose_blank_slices_embed_to_zero(tmp_path):
    """The grounding step end to end on a 2.5-D encoder (random Astra, slab 1, 32 px): its sample's tokens come from
    each slice's slab. The random network embeds blank slices to exactly zero, which the baselines' PCA and the
    sample's normalisation must take as zero (a 0/0 there made the whole configuration fail)."""
    from sail.steps import lesson_run
    from sail.config import EncoderConfig, GroundingConfig
    from sail.embed import embed_encoder, load_embeddings
    from sail.encoders import build_encoder, spatial_embedding, SpatialTokens
    from sail.sae import MatryoshkaSAE
    from sail.train import save_sae, SAERef
    from sail.grounding import ground_config, grounding_sample_of
    lesson = lesson_run()
    ec = EncoderConfig('random:astra-ct', image_size=32, slab=1)
    enc = build_encoder(ec, local_files_only=True)
    embed_encoder(lesson.paths.data, lesson.cfg.embed, lesson.cfg.compute, ec, encoder=enc)
    emb = load_embeddings(lesson.paths.data, 'random-astra-ct')
    assert (np.linalg.norm(np.asarray(emb.X), axis=1) == 0).any()                 # the case this test is about
    sae = MatryoshkaSAE(enc.dim, [8, 32], [2, 4], seeds=3)
    with torch.no_grad(): sae.theta[:] = 0.0
    ref = SAERef('random-astra-ct', 'paper', 'test', save_sae(sae, 0, tmp_path/'sae', {}))
    settings = dataclasses.replace(GroundingConfig(), slices=30, deletion_slices=3, deletion_features=2)
    g = ground_config(lesson.paths, ref, settings)
    assert g.summary['map_kind'] == 'exact' and np.isfinite(g.summary['mAP']) and g.summary['deletion_pairs'] > 0
    assert np.isfinite(g.baselines[['mAP', 'cov_at_0.3']].to_numpy()).all()
    smp = grounding_sample_of(lesson.paths, 'random-astra-ct', settings)
    pooled = spatial_embedding(SpatialTokens(torch.from_numpy(np.asarray(smp.tokens, np.float32)), 'mean', '')).numpy()
    stored = np.asarray(emb.X[smp.rows.row.to_numpy()])
    assert np.abs(pooled - stored).max() <= 2e-3 * np.abs(stored).max()           # the slab tokens make the stored embedding


def test_a_class_of_a_handful_of_cells_is_counted_not_scored():
    """One cell at the top of a feature's map 'detects' a class of 3 cells (AP 0.35, by scikit-learn); with the
    minimum of `grounding.min_class_cells` such a class is counted as rare, scores nothing and is nobody's best organ."""
    labels = np.zeros(128, np.int64); labels[[5, 40, 90]] = 1; labels[100:120] = 2   # class 1: 3 cells, class 2: 20
    dense = np.zeros((2, 128), np.float32); dense[0, 5] = 1.0; dense[1, 100:120] = 2.0
    sc = positive_cells(0, [0, 1], dense)
    res = score_cells(sc, labels, 2, 3, top=4)
    assert res.ap[0, 1] == pytest.approx(average_precision_score(labels == 1, dense[0]), abs=1e-12)
    assert res.ap[0, 1] == pytest.approx((1 + 2 * 3 / 128) / 3) and res.ap[0, 1] >= 0.3
    mono = pd.Series([1.0, 0.5])
    loose, strict = grounding_summary(res, mono, yield_at=(2,)), grounding_summary(res, mono, yield_at=(2,), min_cells=16)
    assert (loose['n_classes'], loose['n_classes_rare'], loose['cov_at_0.3'], loose['yield_at_2']) == (2, 0, 1.0, 1.0)
    assert (strict['n_classes'], strict['n_classes_rare'], strict['cov_at_0.3']) == (1, 1, 1.0)
    assert strict['yield_at_2'] == 0.5 and strict['mAP'] == pytest.approx(1.0)       # feature 0 detects nothing scored
    names = lambda v: ['bg', 'small', 'large'][v]
    assert feature_table(res, names=names).best_organ.tolist() == ['small', 'large']
    ft = feature_table(res, names=names, min_cells=16)
    assert ft.best_organ.tolist() == ['large', 'large'] and ft.ap[0] == pytest.approx(20 / 128)   # its AP there: prevalence
