"""A new scan through a finished run (`sail.query`): DICOM and NIfTI agree, an indexed scan finds itself, bad input is
named, the run is never written to, the CLI's report works in Chromium and the widget in a real JupyterLab."""
import json, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, pydicom
from conftest import ROOT, sail
from test_browser import open_local, not_blank, notebook_in_jupyterlab, last_changes, SHOTS
from sail.config import load_config, EncoderConfig
from sail.totalseg import DATASET_DIRS, IMAGE_FILES, DataFormatError
from sail.query import (load_run, query_scan, read_dicom_series, read_nifti, write_dicom_series, read_query_input,
                        slice_features, QueryError)

pytestmark = pytest.mark.xdist_group('smoke')

@pytest.fixture(scope='module')
def run(smoke_run): return load_run(smoke_run.config)

def scan_file(smoke_run, modality:str, split:str='train')->Path:
    "The image file of the first scan of `split` of the smoke run's dataset."
    s = pd.read_csv(smoke_run.data/'split.csv')
    first = s[(s.modality == modality) & (s.split == split)].sort_values('image_id').iloc[0]
    return smoke_run.tmp/'TotalSegmentator'/DATASET_DIRS[modality]/first.image_id/IMAGE_FILES[modality]

def tree_state(*folders)->dict:
    "Every file under `folders` with its size and modification time."
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in Path(f).rglob('*') if p.is_file()}

def test_real_scans_round_trip_through_dicom(mini, tmp_path):
    for m in ['ct', 'mri']:
        nii = next((mini/DATASET_DIRS[m]).glob(f'*/{IMAGE_FILES[m]}'))
        files = write_dicom_series(nii, tmp_path/m, m)
        a, b = read_nifti(nii), read_dicom_series(tmp_path/m)
        assert len(files) == nib_depth(nii)
        assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine, atol=1e-4) and b.modality == m and a.zooms == b.zooms
    ct = pydicom.data.get_testdata_file('CT_small.dcm')                 # a real CT slice shipped with pydicom
    (tmp_path/'small').mkdir(); shutil.copy(ct, tmp_path/'small')
    v = read_query_input(tmp_path/'small')
    ds = pydicom.dcmread(ct)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert v.modality == 'ct' and v.array.shape == (128, 128, 1) and sorted(np.unique(v.array))[:3] == sorted(np.unique(hu))[:3]

def nib_depth(p): import nibabel as nib; return nib.load(str(p)).shape[2]

def test_dicom_and_nifti_give_the_same_features(smoke_run, run, tmp_path):
    nii = scan_file(smoke_run, 'ct')
    write_dicom_series(nii, tmp_path/'series', 'ct')
    a, b = query_scan(run, nii, study_type='ct abdomen'), query_scan(run, tmp_path/'series', study_type='ct abdomen')
    assert len(a.slices.images) == len(b.slices.images) > 10
    for x, y in zip(a.slices.images, b.slices.images): assert np.array_equal(x, y)
    assert (a.codes != b.codes).nnz == 0 and a.codes.nnz > 0                       # the same features on every slice
    pd.testing.assert_frame_equal(a.hits, b.hits); pd.testing.assert_frame_equal(a.scan_hits, b.scan_hits)
    i = len(a.slices.images) // 2
    f = slice_features(run, a, i)
    assert len(f) == a.codes[i].nnz and f.activation.is_monotonic_decreasing and f.description.notna().any()

def test_an_indexed_scan_retrieves_itself_first(smoke_run, run):
    nii = scan_file(smoke_run, 'ct', 'val')
    image_id = nii.parent.name
    st = pd.read_csv(smoke_run.tmp/'TotalSegmentator'/DATASET_DIRS['ct']/'meta.csv', sep=';').set_index('image_id').study_type[image_id]
    res = query_scan(run, nii, study_type=st)
    indexed = run.rows[(run.rows.image_id == image_id) & (run.rows.modality == 'ct') & (run.rows.plane == 'axial')]
    assert len(indexed) > 5
    best = res.hits[res.hits['rank'] == 1].set_index('slice')
    for i in indexed.slice_index:
        assert best.image_id[i] == image_id and best.similarity[i] > 0.9999, (i, best.loc[i].to_dict())
    # the scan as a whole: the query averages all its axial slices, the index only the trimmed ones -- close, not equal
    assert res.scan_hits.image_id.iloc[0] == image_id and res.scan_hits.similarity.iloc[0] >= res.scan_hits.similarity.iloc[1]
    away = query_scan(run, nii, study_type=st, exclude_scan=('ct', image_id))     # its own scan left out when asked
    assert ('ct', image_id) not in set(zip(away.hits.modality, away.hits.image_id)) and len(away.hits)
    with pytest.raises(QueryError, match="no such scan"): query_scan(run, nii, exclude_scan=('ct', 'nope'))

def test_bad_input_is_named(smoke_run, run, tmp_path):
    (tmp_path/'notes.txt').write_text('hello')
    with pytest.raises(DataFormatError, match=r'notes.txt: not a readable volume'): query_scan(run, tmp_path/'notes.txt')
    (tmp_path/'empty').mkdir(); (tmp_path/'empty'/'a.dcm').write_bytes(b'\0' * 10)
    with pytest.raises(DataFormatError, match=r'empty: no DICOM image files \(1 other file'): query_scan(run, tmp_path/'empty')
    nii = scan_file(smoke_run, 'ct')
    files = write_dicom_series(nii, tmp_path/'tilt', 'ct')
    ds = pydicom.dcmread(files[2]); ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]; ds.save_as(files[2])
    with pytest.raises(DataFormatError, match=r'inconsistent orientation: slice_0002.dcm'): query_scan(run, tmp_path/'tilt')
    files = write_dicom_series(nii, tmp_path/'gap', 'ct'); files[5].unlink()
    with pytest.raises(DataFormatError, match=r'inconsistent slice spacing: slice_0004.dcm to slice_0006.dcm'): query_scan(run, tmp_path/'gap')
    files = write_dicom_series(nii, tmp_path/'pet', 'ct')
    for f in files: ds = pydicom.dcmread(f); ds.Modality = 'PT'; ds.save_as(f)
    with pytest.raises(QueryError, match=r"a PT scan, but run .* was trained on \['CT', 'MRI'\] only"): query_scan(run, tmp_path/'pet')
    one = write_dicom_series(nii, tmp_path/'two', 'ct')
    ds = pydicom.dcmread(one[0]); ds.SeriesInstanceUID = pydicom.uid.generate_uid(); ds.save_as(one[0])
    with pytest.raises(DataFormatError, match=r'2 DICOM series in one folder'): query_scan(run, tmp_path/'two')
    shutil.copy(nii, tmp_path/'scan.nii.gz')                              # a NIfTI that does not say its modality
    with pytest.raises(QueryError, match=r"does not say whether it is CT or MR"): query_scan(run, tmp_path/'scan.nii.gz')
    assert query_scan(run, tmp_path/'scan.nii.gz', modality='ct').codes.shape[0] > 0
    native = run_native(run, smoke_run)                                  # MR: the run sliced each scan's native plane only
    other = next(p for p in ['axial', 'coronal', 'sagittal'] if p != native)
    with pytest.raises(QueryError, match=rf"plane '{other}' is not one the run sliced for MRI \(\['{native}'\]; for MR the native plane"):
        query_scan(run, scan_file(smoke_run, 'mri'), plane=other)
    cfg = load_config(smoke_run.config)                                   # the run's encoder, its weights not here
    cfg.embed.encoders = [EncoderConfig('dinov3', id='pixels', model='sail-tests/gated-model')]
    with pytest.raises(QueryError, match=r"the encoder 'pixels' of its SAE cannot be loaded here"): load_run(cfg)

def run_native(run, smoke_run):
    from sail.query import query_planes
    return query_planes(run.settings, 'mri', read_nifti(scan_file(smoke_run, 'mri')).array.shape)[0]

def test_cli_report_opens_offline_and_never_writes_into_the_run(smoke_run, browser, tmp_path):
    before = tree_state(smoke_run.run, smoke_run.data)
    nii = scan_file(smoke_run, 'ct', 'test')
    r = sail('query', smoke_run.run, nii, '--slice', '5', '--study-type', 'ct abdomen', '--out', tmp_path/'rep', timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'axial slice 5:' in r.stdout and 'most similar slices' in r.stdout and 'most similar scans' in r.stdout
    bad = sail('query', smoke_run.run, tmp_path/'nothing.nii.gz', timeout=300)
    assert bad.returncode == 2 and 'nothing.nii.gz: no such file' in bad.stderr
    inside = sail('query', smoke_run.run, nii, '--out', smoke_run.run/'q', timeout=300)
    assert inside.returncode == 2 and 'inside the run it reads' in inside.stderr
    assert tree_state(smoke_run.run, smoke_run.data) == before                    # nothing written, touched or removed
    page = open_local(browser, tmp_path/'rep'/'report.html', tmp_path/'rep')
    page.wait_for_load_state('load'); page.wait_for_timeout(500)
    assert page.locator('#heatmap .main-svg').count() > 0
    shown = lambda: page.inner_text('.sail-query-slice.on h3')
    first = shown(); assert first.startswith('axial slice 5 ')
    assert page.locator('.sail-query-slice.on .hit img').count() > 0
    assert page.evaluate("[...document.querySelectorAll('.sail-query-slice.on .hit img')].every(i => i.src.startsWith('data:image/webp'))")
    page.focus('#slice'); page.keyboard.press('ArrowRight'); page.wait_for_timeout(200)
    assert shown().startswith('axial slice 6 '), shown()
    SHOTS.mkdir(parents=True, exist_ok=True); page.screenshot(path=str(SHOTS/'query_report.png'), full_page=True)
    assert not page.errors and not page.outside, (page.errors, page.outside)
    assert not_blank(SHOTS/'query_report.png')

def test_query_widget_in_jupyterlab(smoke_run, browser, tmp_path, request):
    with notebook_in_jupyterlab(browser, ROOT/'nbs'/'17a_query.ipynb', {'config': str(smoke_run.config)}, tmp_path, request, 'jupyterlab_query') as page:
        head_css = '.widget-html .sail-query-slice h3'                      # the run section's widget, not a lesson's HTML
        page.wait_for_function(f"() => document.querySelectorAll({json.dumps(head_css)}).length > 0", timeout=240_000)
        head = page.locator(head_css).last
        before = head.inner_text()
        page.locator('.widget-slider .noUi-handle').last.focus(); page.keyboard.press('ArrowRight')
        last_changes(page, head_css, before)
        after = head.inner_text()
        n0, n1 = int(before.split(' slice ')[1].split()[0]), int(after.split(' slice ')[1].split()[0])
        assert n1 == n0 + 1, (before, after)
        assert page.locator('.widget-html .sail-query-slice .hit img').count() > 0
        shown = ("[...document.querySelectorAll('.widget-html .sail-query-slice img.map')]"
                 ".filter(i => i.style.display === 'block')")
        assert page.evaluate(shown + '.length') == 1                          # the strongest feature's map

# ---------------------------------------------------------------- feature maps over the user's scan

def planted_run(tmp_path, size:int):
    """A scan stored LPS with anisotropic voxels (1.5 × 1.5 × 3 mm) whose only bright structure is a cube at stored
    voxels [4:8, 10:14, 3:6], and a run built from parts on its own coronal slices: the pixels encoder at the slices'
    size (one embedding dimension per stored pixel) and a seeded SAE."""
    import nibabel as nib, scipy.sparse as sp
    from sail.encoders import build_encoder
    from sail.embed import embed_images
    from sail.sae import MatryoshkaSAE
    from sail.codes import compute_codes, feature_stats
    from sail.train import SAERef
    from sail.totalseg import ScanSettings
    from sail.query import TrainedRun, feature_table, slice_query, read_nifti
    vol = np.full((20, 16, 12), -1000, np.int16); vol[4:8, 10:14, 3:6] = 300
    aff = np.diag([-1.5, -1.5, 3.0, 1.0]); aff[:3, 3] = [30.0, 20.0, -15.0]
    nii = tmp_path/'scan'/'ct.nii.gz'; nii.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, aff), nii)
    qs = slice_query(read_nifti(nii), 'ct', ScanSettings(), 'coronal', window=(50, 400))
    assert qs.images[0].shape == (24, 20) and size == 24            # rows along z resampled 3 mm -> 1.5 mm
    enc = build_encoder(EncoderConfig('pixels', image_size=size))
    X = embed_images(enc, qs.images, [qs.window] * len(qs.images))
    sae = MatryoshkaSAE(enc.dim, [16, 64], [[4, 8]], seeds=[0])
    codes = compute_codes(sae, X).matrix(64)
    rows = pd.DataFrame(dict(slice_id=[f'q{i}' for i in range(len(X))], modality='ct', image_id='planted',
                             plane='coronal', slice_index=np.arange(len(X)), split='train'))
    run = TrainedRun('planted', SAERef('pixels', 'paper', 'planted', tmp_path/'sae'), enc, sae,
                     feature_table(64, feature_stats(codes).frac_active.to_numpy()), codes, rows, ScanSettings(),
                     ['ct'])
    return run, nii, vol > 0

def test_maps_volume_is_on_the_input_grid_and_peaks_on_the_planted_structure(tmp_path):
    import nibabel as nib
    from scipy import ndimage
    from sail.query import scan_top_features, add_maps, write_maps_nifti
    run, nii, cube = planted_run(tmp_path, 24)
    res = query_scan(run, nii, 'coronal', window=(50, 400))
    feats = scan_top_features(res, 6); assert len(feats) >= 3
    files = write_maps_nifti(add_maps(run, res, feats), tmp_path/'out'/'maps.nii.gz', feats)
    src, out = nib.load(str(nii)), nib.load(str(files[0]))
    assert out.shape == (*src.shape, len(feats)) and np.array_equal(out.affine, src.affine)
    m = np.asarray(out.dataobj)
    near = ndimage.binary_dilation(cube, np.ones((3, 3, 3), bool))        # linear resampling may spill one voxel
    assert np.abs(m[~near]).max() == 0                                      # a pixel map lives where the pixels are
    for j in range(len(feats)):
        if m[..., j].max() > 0:                                             # its peak: inside the planted cube
            assert cube[np.unravel_index(int(np.argmax(m[..., j])), cube.shape)], feats[j]
    # the map on a slice, pixel by pixel, is w_f,p · x_p / ‖x‖ (pixels encoder), on the slice where f is strongest
    f = feats[0]; k = int(np.argmax(res.codes[:, f].toarray().ravel()))
    fm = add_maps(run, res, [f]).maps[k]
    x = res.slices.images[k].astype(np.float64) / 255
    want = run.sae.W[0][f].detach().numpy().reshape(24, 24)[:, 2:22] * x / np.linalg.norm(x)   # letterbox: 2-px bars
    got = fm.maps[list(fm.features).index(f)]
    assert res.codes[k, f] > 0 and np.allclose(got[:, 2:22], want, atol=1e-6)
    assert np.abs(got[:, [0, 1, 22, 23]]).max() == 0                       # nothing on the letterbox bars

def test_cli_maps_nifti_reads_back_on_the_input_grid(smoke_run, browser, tmp_path):
    import nibabel as nib
    nii = scan_file(smoke_run, 'ct', 'test')
    r = sail('query', smoke_run.run, nii, '--study-type', 'ct abdomen', '--out', tmp_path/'rep',
             '--maps', tmp_path/'maps.nii.gz', timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    src, out = nib.load(str(nii)), nib.load(str(tmp_path/'maps.nii.gz'))
    meta = json.loads((tmp_path/'maps.json').read_text())
    assert out.shape == (*src.shape, len(meta['features'])) and np.allclose(out.affine, src.affine)
    assert np.abs(np.asarray(out.dataobj)).max() > 0
    two = sail('query', smoke_run.run, nii, '--out', tmp_path/'rep2', '--maps', tmp_path/'two.nii.gz', '--features',
               ','.join(map(str, meta['features'][:2])), '--maps-per-feature', timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert [nib.load(str(tmp_path/f'two_f{f}.nii.gz')).shape for f in meta['features'][:2]] == [src.shape] * 2
    page = open_local(browser, tmp_path/'rep'/'report.html', tmp_path/'rep')
    page.wait_for_load_state('load'); page.wait_for_timeout(500)
    on = "[...document.querySelectorAll('.sail-query-slice.on img.map')]"
    vis = on + ".filter(i => i.style.display === 'block').length"
    assert page.evaluate(vis) == 1                                           # the strongest feature's map is drawn
    drawn = page.evaluate("""() => { const im = [...document.querySelectorAll('.sail-query-slice.on img.map')]
        .find(i => i.style.display === 'block'); const c = document.createElement('canvas');
        c.width = im.naturalWidth; c.height = im.naturalHeight; const g = c.getContext('2d'); g.drawImage(im, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
    assert drawn > 0                                                          # the overlay has drawn pixels
    page.uncheck('#maps'); assert page.evaluate(vis) == 0                   # toggled off
    page.check('#maps'); page.locator('.sail-query-slice.on tr[data-f]').nth(1).click()
    f2 = page.locator('.sail-query-slice.on tr[data-f]').nth(1).get_attribute('data-f')
    assert page.evaluate(on + ".find(i => i.style.display === 'block').dataset.f") == f2
    page.fill('#opacity', '0.25'); page.dispatch_event('#opacity', 'input')
    assert page.evaluate("[...document.querySelectorAll('img.map')].every(i => i.style.opacity === '0.25')")
    assert not page.errors and not page.outside, (page.errors, page.outside)
