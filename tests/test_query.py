"""A new scan through a finished run (`sail.query`): DICOM and NIfTI agree, an indexed scan finds itself, bad input is
named, the run is never written to, the CLI's report works in Chromium and the widget in a real JupyterLab."""
import json, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, pydicom
from conftest import ROOT, sail
from test_browser import browser, open_local, not_blank, notebook_in_jupyterlab, last_changes, SHOTS   # noqa: F401 (browser is a fixture)
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
