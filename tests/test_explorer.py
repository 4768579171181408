"""The explorer's feature maps (issue 29): heat layers and organ outlines checked against NumPy, the feature browser's
overlay, toggle, opacity slider and organ search in headless Chromium, and the page without grounding results.

Screenshots are written to runs/test-screenshots/."""
import base64, io, json
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from conftest import ROOT
import sail.explorer as X
from sail.explorer import (GroundingView, heat_layer, outline_layer, overlay_images, organ_index, feature_page,
                           feature_page_configs, _plotly_js, _profile_slices)
from sail.steps import lesson_run
from sail.codes import write_codes
from sail.monosemanticity import MONOSEMANTICITY
from sail.slices import load_slices, read_label_maps, slice_image, thumbnail
from sail.totalseg import ORGANS

SHOTS = ROOT/'runs'/'test-screenshots'

def decode(uri:str)->np.ndarray:
    "The pixels of a data URI."
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(',', 1)[1]))))

def n_layers(d:dict)->int: return sum(len(v) for v in d.values())

def page_data(text:str)->dict:
    return json.loads(text.split('id="sail-data">', 1)[1].split('</script>', 1)[0].replace('<\\/', '</'))

# ---------------------------------------------------------------- layers against NumPy

def test_heat_layer_is_the_positive_map_at_thumbnail_size():
    g = np.random.default_rng(0)
    m = g.normal(size=(50, 70)).astype(np.float32)
    layer = np.asarray(heat_layer(m, 35))
    size = thumbnail(Image.new('L', (70, 50)), 35).size
    assert layer.shape == (size[1], size[0], 4)
    small = np.asarray(Image.fromarray(np.maximum(m, 0), mode='F').resize(size, Image.Resampling.LANCZOS), np.float32)
    drawn = layer[..., 3] > 0
    assert drawn.any() and (~drawn).any()
    assert np.all(small[drawn] > 0)                                # only positive map values are drawn
    a, v = layer[..., 3][drawn].astype(float), small[drawn]
    assert np.corrcoef(a, v)[0, 1] > 0.9                           # stronger map, more opaque
    assert np.asarray(heat_layer(-np.abs(m), 35))[..., 3].max() == 0  # a map with no positive part draws nothing

def test_outline_is_the_boundary_of_the_organ():
    lab = np.zeros((60, 90), np.uint8); yy, xx = np.mgrid[:60, :90]
    lab[(yy - 30) ** 2 / 400 + (xx - 40) ** 2 / 900 < 1] = 5        # an ellipse of organ value 5
    lab[:5] = 9
    ring = np.asarray(outline_layer(lab, 5, 45))[..., 3] > 0
    mask = Image.fromarray((lab == 5).astype(np.uint8) * 255)
    inside = np.asarray(mask.resize(ring.shape[::-1], Image.Resampling.LANCZOS)) >= 128
    pad = np.pad(inside, 1, constant_values=False)
    touches_outside = ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    assert np.array_equal(ring, inside & touches_outside)   # exactly the inside pixels with an outside 4-neighbour
    assert ring.sum() > 40 and not ring[:2].any()                  # the other organ (9) is not outlined

def test_overlays_only_where_the_feature_is_active():
    rows = pd.DataFrame(dict(slice_id=['a', 'b']))
    def maps(r, feats):
        from collections import namedtuple
        T = namedtuple('T', 'slice_id features codes maps kind')
        s = r.slice_id[0]; m = np.zeros((len(feats), 20, 20), np.float32)
        for j, f in enumerate(feats):
            if not (f == 1 and s == 'a'): m[j, 5:10, 5:10] = f + 1
        return [T(s, np.array(feats), m.max((1, 2)), m, 'pixels')]
    lab = np.zeros((20, 20), np.uint8); lab[2:15, 2:15] = 1 + ORGANS.index('liver')
    ov = overlay_images(rows, {1: ['a', 'b'], 2: ['b']}, {1: 'liver', 2: 'no-such-organ'}, 20, maps,
                        lambda r: {s: lab for s in r.slice_id})
    assert sorted(ov.heat[1]) == ['b'] and sorted(ov.heat[2]) == ['b']      # feature 1 inactive on 'a': no layer
    assert sorted(ov.outline) == [1] and sorted(ov.outline[1]) == ['a', 'b']  # an organ outlined on both of its slices
    a = decode(ov.heat[1]['b'])[..., 3]
    ys, xs = np.nonzero(a)
    assert ys.min() >= 3 and ys.max() <= 11 and xs.min() >= 3 and xs.max() <= 11   # where the map is (and a blur)
    assert ov.kind == 'pixels' and ov.nbytes == sum(len(u) for d in (ov.heat, ov.outline) for v in d.values()
                                                    for u in v.values())

# ---------------------------------------------------------------- the feature browser on the lesson run

@pytest.fixture(scope='module')
def lesson():
    run = lesson_run()
    write_codes(run.paths, run.cfg.sae)
    MONOSEMANTICITY.make(run.paths, run.refs[0], run.cfg.eval)
    return run

def test_page_without_grounding_says_so(lesson, monkeypatch):
    ref = lesson.refs[0]
    monkeypatch.setattr(X, '_module', lambda name: None)   # a run (or a SAIL) with no grounding or stability step
    c = feature_page_configs(lesson.paths, lesson.cfg.explorer, [ref], lesson.cfg.eval)[0]
    assert (c['heat'], c['outline'], c['organs'], c['overlay_bytes']) == ({}, {}, {}, 0)
    assert 'no grounding results' in c['note'] and 'stability not assessed' in c['note']
    assert all(p['best_organ'] is None and p['stability'] is None for p in c['profiles'])

def _toy_grounding(lesson):
    """A grounding table, stability rates and map maker for the lesson SAE, made here (not by SAIL's grounding step):
    each feature's map is the slice's own pixels inside one organ of the label map, its best organ that organ."""
    ref = lesson.refs[0]
    sl = load_slices(lesson.paths.data)
    labels = read_label_maps(lesson.paths.data, sl)
    present = sorted({int(v) for m in labels.values() for v in np.unique(m) if v})
    feats = list(range(24))
    organ = {f: ORGANS[present[f % len(present)] - 1] for f in feats}
    g = np.random.default_rng(1)
    table = pd.DataFrame(dict(feature=feats, best_organ=[organ[f] for f in feats], ap=g.random(len(feats)).round(3),
                              mass_inside=g.random(len(feats)).round(3)))
    rates = {f: round(float(r), 3) for f, r in zip(feats, g.random(len(feats)))}
    def maps(rows, features):
        from collections import namedtuple
        T = namedtuple('T', 'slice_id features codes maps kind')
        out = []
        for s, p in zip(rows.slice_id, rows.image_path):
            img = np.asarray(slice_image(lesson.paths.data, p), np.float32) / 255
            m = np.stack([img * (labels[s] == 1 + ORGANS.index(organ.get(f, ORGANS[0]))) for f in features])
            out.append(T(s, np.array(features), m.sum((1, 2)), m, 'pixels'))
        return out
    return table, rates, maps

@pytest.fixture(scope='module')
def grounded_page(lesson, tmp_path_factory):
    "The feature browser of the lesson SAE with a toy grounding table and maps wired in through SAIL's own functions."
    mp = pytest.MonkeyPatch()
    table, rates, maps = _toy_grounding(lesson)
    mp.setattr(X, 'grounding_of', lambda paths, ref: GroundingView(table, rates, 'pixels', 'toy maps (test)'))
    def overlays(paths, ref, shown, best, size, device='cpu', encoder=None):
        return overlay_images(load_slices(paths.data), shown, best, size, maps,
                              lambda r: read_label_maps(paths.data, r))
    mp.setattr(X, 'run_overlays', overlays)
    folder = tmp_path_factory.mktemp('explorer')
    text = feature_page(lesson.paths, lesson.cfg.explorer, lesson.refs, lesson.cfg.eval, 'test')
    mp.undo()
    (folder/'features.html').write_text(text); _plotly_js(folder)
    return folder/'features.html', table, rates, page_data(text)

def test_page_embeds_grounding_and_layers(grounded_page):
    page, table, rates, d = grounded_page
    c = d['configs'][0]
    first = c['profiles'][0]
    row = table.set_index('feature').loc[first['feature']]
    assert (first['best_organ'], first['ap'], first['mass_inside']) == (row.best_organ, row.ap, row.mass_inside)
    assert first['stability'] == rates[first['feature']]
    assert set(c['heat'][str(first['feature'])]) <= set(_profile_slices(first))
    for o, hits in c['organs'].items():                                   # the organ index is the table's, by AP
        want = table[table.best_organ == o].sort_values(['ap', 'feature'], ascending=[False, True]).feature.tolist()
        assert [f for f, _, _ in hits] == want[:25]
    size = len(page.read_text().encode())
    print(f"overlays add {c['overlay_bytes']:,} bytes to a {size:,}-byte page ({n_layers(c['heat'])} heat layers, "
          f"{n_layers(c['outline'])} outlines)")
    assert 0 < c['overlay_bytes'] < size

# ---------------------------------------------------------------- the same page in Chromium


DRAWN = """im => { const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;
  const x = c.getContext('2d'); x.drawImage(im, 0, 0); const a = x.getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < a.length; i += 4) n += a[i] > 0; return n; }"""

HEATS = "[...document.querySelectorAll('#thumbs img.heat')]"
SET_RANGE = "v => { const r = document.getElementById('ID'); r.value = v; r.dispatchEvent(new Event('input')); }"

def check_overlay_controls(page, shot:str):
    "The heat layers have drawn pixels; the toggle hides and shows them; the opacity slider changes them."
    heat = page.locator('#thumbs img.heat')
    assert heat.count() > 0
    assert heat.first.evaluate(DRAWN) > 0                                    # non-transparent pixels
    fig = page.locator('#thumbs figure.sail-thumb:has(img.heat)').first.locator('.stack')
    fig.screenshot(path=str(SHOTS/f'{shot}_on.png'))
    page.uncheck('#overlay'); page.wait_for_timeout(100)
    assert page.evaluate(f"{HEATS}.every(i => getComputedStyle(i).display === 'none')")
    fig.screenshot(path=str(SHOTS/f'{shot}_off.png'))
    page.check('#overlay'); page.wait_for_timeout(100)
    assert page.evaluate(f"{HEATS}.every(i => getComputedStyle(i).display !== 'none')")
    set_opacity = SET_RANGE.replace('ID', 'opacity')
    page.evaluate(set_opacity, 100); page.wait_for_timeout(100); fig.screenshot(path=str(SHOTS/f'{shot}_100.png'))
    page.evaluate(set_opacity, 20); page.wait_for_timeout(100); fig.screenshot(path=str(SHOTS/f'{shot}_20.png'))
    assert page.evaluate("getComputedStyle(document.querySelector('#thumbs img.heat')).opacity") == '0.2'
    assert page.inner_text('#opacityLabel') == '20 %'
    px = lambda n: np.asarray(Image.open(SHOTS/f'{shot}_{n}.png').convert('RGB'), float)
    changed = lambda a, b: int((np.abs(px(a) - px(b)).max(-1) > 8).sum())   # pixels that look different
    assert changed('on', 'off') > 10 and changed('100', '20') > 10          # the map shows, and its opacity matters
    assert np.abs(px('20') - px('off')).sum() < np.abs(px('100') - px('off')).sum()

def organ_search(page, organ:str)->list:
    page.fill('#organ', organ); page.keyboard.press('Enter'); page.wait_for_timeout(200)
    return [int(b) for b in page.locator('#organHits button.hit').evaluate_all("bs => bs.map(b => b.dataset.feature)")]

def test_feature_browser_overlay_in_chromium(grounded_page, browser):
    page_file, table, rates, d = grounded_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=dict(width=1300, height=950))
    errors = []; page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.goto(page_file.resolve().as_uri()); page.wait_for_load_state('load'); page.wait_for_timeout(500)
    c = d['configs'][0]; p = c['profiles'][0]
    assert page.inner_text('#bestOrgan') == p['best_organ'].replace('_', ' ')
    assert f"AP {p['ap']:.3f}" in page.inner_text('#grounding')
    assert page.inner_text('#stability') == f"reappears in {100 * rates[p['feature']]:.0f} % of other seeds"
    assert page.locator('#thumbs img.outline').count() > 0
    check_overlay_controls(page, 'explorer_overlay')
    organ = table.best_organ.value_counts().index[0]                         # the organ most features ground on
    want = table[table.best_organ == organ].sort_values(['ap', 'feature'], ascending=[False, True]).feature.tolist()
    assert organ_search(page, organ) == want[:25]                           # what the grounding table says, by AP
    on_page = [f for f in want if f in {q['feature'] for q in c['profiles']}]
    if on_page: assert page.inner_text('#title').split('#')[1].startswith(f'{on_page[0]} ')   # jumps to the best one
    assert organ_search(page, 'zzz') == [] and 'no feature grounds on' in page.inner_text('#organHits')
    page.screenshot(path=str(SHOTS/'explorer_overlay_page.png'), full_page=True)
    assert not errors, errors
    page.close()

# ---------------------------------------------------------------- with SAIL's own grounding step (nbs/11a_grounding)

@pytest.fixture(scope='module')
def real_page(lesson, tmp_path_factory):
    "The feature browser of the lesson SAE after the real grounding step: real maps, outlines and organ index."
    gm = pytest.importorskip('sail.grounding')
    if not hasattr(gm, 'GROUNDING'): pytest.skip('no grounding step in this SAIL')
    ref = lesson.refs[0]
    gm.GROUNDING.make(lesson.paths, ref, lesson.cfg.grounding, 'cpu')
    folder = tmp_path_factory.mktemp('explorer-real')
    text = feature_page(lesson.paths, lesson.cfg.explorer, [ref], lesson.cfg.eval, 'test')
    (folder/'features.html').write_text(text); _plotly_js(folder)
    return folder/'features.html', gm.GROUNDING.load(lesson.paths, ref).features, page_data(text), gm, ref

def test_real_grounding_on_the_page(real_page, lesson):
    page, table, d, gm, ref = real_page
    c = d['configs'][0]
    assert c['heat'] and c['kind'] in ('pixels', 'mean', 'approximate')
    for o, hits in c['organs'].items():                                # the organ search lists organ_features' order
        assert [f for f, _, _ in hits] == gm.organ_features(lesson.paths, ref, o).feature.tolist()[:25]
    for p in c['profiles']:                                            # each header says what the table says
        row = table.set_index('feature').loc[p['feature']]
        assert p['best_organ'] == (None if pd.isna(row.best_organ) else row.best_organ)
        if p['best_organ']: assert p['ap'] == round(float(row.ap), 4)
        active = {s for _, items in p['rows'] for s, a in items if a > 0}
        assert set(c['heat'].get(str(p['feature']), {})) <= active    # a map only where the feature is active
    size = len(page.read_text().encode())
    print(f"real maps: overlays add {c['overlay_bytes']:,} bytes to a {size:,}-byte page ({n_layers(c['heat'])} heat "
          f"layers, {n_layers(c['outline'])} outlines)")

def test_real_grounding_in_chromium(real_page, browser):
    page_file, table, d, gm, ref = real_page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=dict(width=1300, height=950))
    errors = []; page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(page_file.resolve().as_uri()); page.wait_for_load_state('load'); page.wait_for_timeout(500)
    c = d['configs'][0]
    j = next(i for i, p in enumerate(c['profiles']) if c['heat'].get(str(p['feature'])))
    page.evaluate(SET_RANGE.replace('ID', 'rank'), j + 1)
    page.wait_for_timeout(200)
    check_overlay_controls(page, 'explorer_real_overlay')
    organ = max(c['organs'], key=lambda o: (len(c['organs'][o]), o))
    want = table[table.best_organ == organ].sort_values('ap', ascending=False, kind='stable').feature.tolist()
    assert organ_search(page, organ) == want[:25]
    assert not errors, errors
    page.close()
