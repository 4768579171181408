"""Explorers and the documentation site in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser).

Screenshots are written to runs/test-screenshots/."""
import os, json, time, socket, secrets, subprocess, sys, contextlib
from pathlib import Path
import numpy as np, pytest, nbformat
from PIL import Image
from conftest import ROOT
from sail.docs import preview, site_notebooks
from sail.pipeline import inject_parameters

SHOTS = ROOT/'runs'/'test-screenshots'


def open_local(browser, page_file:Path, allowed:Path, width=1300, height=950):
    "Open a file:// page; record console errors, page errors and every request that leaves `allowed`."
    page = browser.new_page(viewport=dict(width=width, height=height))
    page.errors, page.outside = [], []
    page.on('console', lambda m: page.errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: page.errors.append(str(e)))
    def route(r):
        u = r.request.url
        inside = u.startswith('data:') or (u.startswith('file://') and Path(u[7:].split('?')[0].split('#')[0]).resolve().is_relative_to(allowed.resolve()))
        if inside: r.continue_()
        else: page.outside.append(u); r.abort()
    page.route('**/*', route)
    page.goto(Path(page_file).resolve().as_uri())
    return page

def not_blank(png:Path, min_std:float=10.0)->bool:
    "A screenshot with real content, not a uniform area."
    return float(np.asarray(Image.open(png).convert('L'), float).std()) > min_std

# ---------------------------------------------------------------- the standalone explorer pages of a run

@pytest.mark.xdist_group('smoke')
def test_explorer_pages_work_offline(smoke_run, browser):
    folder = smoke_run.run/'explorers'; SHOTS.mkdir(parents=True, exist_ok=True)
    for name in ['index.html', 'features.html', 'landscape.html', 'retrieval.html']:
        page = open_local(browser, folder/name, folder)
        page.wait_for_load_state('load'); page.wait_for_timeout(600)
        if name == 'features.html':
            title, desc = page.inner_text('#title'), page.inner_text('#description')
            img = page.get_attribute('#thumbs img', 'src')
            assert page.locator('#hist .main-svg').count() > 0 and page.locator('#thumbs img').count() > 0
            labels = page.locator('#thumbs .sample-label').all_inner_texts()                      # each row of slices says what it is
            assert any(l.startswith('M₁₀ is computed from') for l in labels) and labels[-1].startswith('highest activations'), labels
            page.focus('#rank'); page.keyboard.press('ArrowRight'); page.wait_for_timeout(300)   # move the feature control
            assert page.inner_text('#title') != title and page.inner_text('#rankLabel').startswith('2 /')
            assert page.inner_text('#description') != desc or page.get_attribute('#thumbs img', 'src') != img
            assert page.get_attribute('#thumbs img', 'src') != img                                  # other images
            page.fill('#search', 'zzz-no-such-concept'); page.keyboard.press('Enter'); page.wait_for_timeout(200)
            assert 'no feature matches' in page.inner_text('#note')
            check_feature_maps(page, smoke_run.run)
        if name == 'retrieval.html':
            bars = lambda: page.evaluate("document.getElementById('fp')._fullData[0].x.length")
            page.select_option('#k', '1'); page.wait_for_timeout(200); one = bars()
            page.select_option('#k', '5'); page.wait_for_timeout(200)
            assert one == 1 and bars() >= 1 and page.locator('#hits img').count() > 0
        if name == 'landscape.html':
            assert page.evaluate("document.querySelector('.js-plotly-plot')._fullData.length") > 8
        shot = SHOTS/f'explorer_{name[:-5]}.png'; page.screenshot(path=str(shot), full_page=True)
        assert not page.errors, (name, page.errors)
        assert not page.outside, (name, page.outside)
        assert not_blank(shot)
        page.close()

def check_feature_maps(page, run:Path):
    """The feature browser's maps (issue 29): with grounding results, the overlay has drawn pixels, toggles and follows
    the opacity slider, and the organ search lists what the grounding table says; without them, the page says so."""
    import pandas as pd
    from test_explorer import check_overlay_controls, organ_search, SET_RANGE
    cs = page.evaluate("D.configs.map(c => ({label: c.label, organs: c.organs || {}, note: c.note || '', "
                       "heat: c.profiles.map(p => Object.keys((c.heat || {})[p.feature] || {}).length)}))")
    with_maps = [(i, c) for i, c in enumerate(cs) if any(c['heat'])]
    if not with_maps:                                                        # no grounding results: no overlay, a note
        assert 'no grounding results' in page.inner_text('#mapnote') and page.locator('#thumbs img.heat').count() == 0
        return
    i, c = with_maps[0]
    page.select_option('#config', str(i)); page.wait_for_timeout(200)
    j = next(k for k, n in enumerate(c['heat']) if n)
    page.evaluate(SET_RANGE.replace('ID', 'rank'), j + 1)
    page.wait_for_timeout(200)
    assert 'AP ' in page.inner_text('#grounding') or 'grounds on no organ' in page.inner_text('#grounding')
    check_overlay_controls(page, 'explorer_features_maps')
    table = pd.read_parquet(run/'results'/'grounding'/c['label']/'features.parquet')
    organ = max(c['organs'], key=lambda o: (len(c['organs'][o]), o))
    want = table[table.best_organ == organ].sort_values('ap', ascending=False, kind='stable').feature.tolist()
    assert organ_search(page, organ) == want[:25], organ

# ---------------------------------------------------------------- the feature explorer in JupyterLab

def _free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@contextlib.contextmanager
def notebook_in_jupyterlab(browser, notebook:Path, parameters:dict, tmp_path:Path, request, shot:str):
    """A step notebook run top to bottom in a real JupyterLab (its parameters injected as the executor injects them,
    no stored outputs): yields the browser page once every cell has started; on failure saves `<shot>_FAILED.png` and
    prints the server's log; always stops the server."""
    nb = inject_parameters(nbformat.read(notebook, as_version=4), parameters)
    for c in nb.cells:                                                           # a clean start: no stored outputs
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    nb.metadata.pop('widgets', None)
    nbformat.write(nb, tmp_path/notebook.name)
    port, token = _free_port(), secrets.token_hex(8)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path/'cfg'), JUPYTER_RUNTIME_DIR=str(tmp_path/'rt'), SAIL_ROOT=str(ROOT))
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ip=127.0.0.1', f'--IdentityProvider.token={token}',
                            f'--ServerApp.root_dir={tmp_path}', '--ServerApp.allow_root=True', '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                           cwd=tmp_path, env=env, stdout=open(tmp_path/'lab.log', 'w'), stderr=subprocess.STDOUT)
    try:
        import urllib.request
        for _ in range(120):
            try: urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status?token={token}', timeout=2); break
            except Exception: time.sleep(0.5)
        else: pytest.fail('jupyter lab did not start:\n' + (tmp_path/'lab.log').read_text()[-2000:])
        page = browser.new_page(viewport=dict(width=1400, height=1000))
        request.node.lab_page = page                                            # for the screenshot on failure
        page.goto(f'http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}')
        page.wait_for_selector('.jp-Notebook', timeout=60_000)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"], .jp-Toolbar-kernelStatus', timeout=60_000)
        page.wait_for_timeout(1500)
        started = "() => [...document.querySelectorAll('.jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))"
        for attempt in range(3):     # a click that lands before the kernel is attached runs nothing (seen in CI): ask again
            page.click('li.lm-MenuBar-item:has-text("Run")'); page.click('li.lm-Menu-item:has-text("Run All Cells")')
            try: page.wait_for_function(started, timeout=30_000); break
            except Exception:
                if attempt == 2: raise
        yield page
        SHOTS.mkdir(parents=True, exist_ok=True); page.screenshot(path=str(SHOTS/f'{shot}.png'))
    except Exception:
        SHOTS.mkdir(parents=True, exist_ok=True)
        if getattr(request.node, 'lab_page', None): request.node.lab_page.screenshot(path=str(SHOTS/f'{shot}_FAILED.png'), full_page=True)
        print((tmp_path/'lab.log').read_text()[-3000:])
        raise
    finally:
        lab.terminate()
        try: lab.wait(20)
        except subprocess.TimeoutExpired: lab.kill()

def last_changes(page, selector:str, before:str, timeout:int=30_000):
    "Wait until the last element matching `selector` shows other text than `before`."
    page.wait_for_function(f"() => {{ const hs = document.querySelectorAll({json.dumps(selector)}); const h = hs[hs.length - 1]; "
                           f"return h && h.innerText !== {json.dumps(before)}; }}", timeout=timeout)

@pytest.mark.xdist_group('smoke')
def test_jupyterlab_explorer_slider_changes_the_feature(smoke_run, browser, tmp_path, request):
    with notebook_in_jupyterlab(browser, ROOT/'nbs'/'17_explorer.ipynb', {'config': str(smoke_run.config)}, tmp_path, request, 'jupyterlab_explorer') as page:
        page.wait_for_function("() => [...document.querySelectorAll('.sail-feature h3')].some(h => h.innerText.startsWith('pixels/'))",
                               timeout=240_000)                          # the run's explorer (the last widget) has rendered
        info = page.locator('.sail-feature h3').last
        before = info.inner_text()
        page.locator('.widget-slider').last.scroll_into_view_if_needed()
        page.locator('.widget-slider .noUi-handle').last.focus()
        page.keyboard.press('ArrowRight')
        last_changes(page, '.sail-feature h3', before)
        after = info.inner_text()
        assert 'rank 1)' in before and 'rank 2)' in after, (before, after)
        ground = page.locator('.sail-feature .sail-ground').last.inner_text()          # best organ + AP, or why not
        assert ('AP ' in ground or 'grounds on no organ' in ground or 'not grounded' in ground), ground
        assert page.locator('.widget-label:has-text("map opacity")').count() > 0
        heat = page.locator('.sail-thumbs img.sail-heat')
        if heat.count():                                                                 # the run has feature maps
            op = heat.last.evaluate('i => getComputedStyle(i).opacity')
            page.locator('.widget-slider .noUi-handle').nth(-2).focus(); page.keyboard.press('ArrowLeft')
            page.wait_for_function(f"() => {{ const h = document.querySelectorAll('.sail-thumbs img.sail-heat'); "
                                   f"return h.length && getComputedStyle(h[h.length - 1]).opacity !== '{op}'; }}",
                                   timeout=30_000)

# ---------------------------------------------------------------- the offline preview of the documentation site

def test_offline_site_preview(browser, tmp_path):
    try: pages = preview(out=tmp_path/'site', process=not (ROOT/'_proc'/'index.ipynb').exists())
    except FileNotFoundError as e:
        if os.environ.get('SAIL_REQUIRE_BROWSER') == '1': raise
        pytest.skip(str(e))
    assert [p.stem for p in pages] == [p.stem for p in site_notebooks()]
    site = tmp_path/'site'; SHOTS.mkdir(parents=True, exist_ok=True)
    for p in pages:
        page = open_local(browser, p, site)
        page.wait_for_load_state('load'); page.wait_for_timeout(400 if p.stem not in ('16_figures', '17_explorer') else 2500)
        assert page.locator('nav.sail-side a.current').count() == 1, p.name
        assert page.locator('h1').count() >= 1, p.name
        if p.stem == '16_figures':                                               # plotly figures are visible ...
            plots = page.locator('.js-plotly-plot')
            assert plots.count() >= 3
            fig2 = plots.first; fig2.scroll_into_view_if_needed()
            assert fig2.bounding_box()['height'] > 300
            fig2.screenshot(path=str(SHOTS/'site_fig2.png'))
            assert not_blank(SHOTS/'site_fig2.png', 20)
        if p.stem == '17_explorer':                                              # ... and widget views
            w = page.locator('.widget-slider').first
            w.scroll_into_view_if_needed(); assert w.is_visible()
            assert 'feature #' in page.locator('.sail-feature').first.inner_text()
            page.screenshot(path=str(SHOTS/'site_explorer.png'))
        assert not page.errors, (p.name, page.errors)
        assert not page.outside, (p.name, page.outside)
        page.close()
