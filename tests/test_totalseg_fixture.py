"The real fixture scans slice correctly: slice counts per plane, plane labels from the affine, organ flags, windows."
import numpy as np, nibabel as nib, pandas as pd, pytest
from PIL import Image
from nibabel.orientations import aff2axcodes
from sail.totalseg import slice_scan, read_meta, ORGANS, CLASSES, window_to_uint8, ct_window, PLANES

RAS_AXIS_OF_CODE = {'L': 0, 'R': 0, 'P': 1, 'A': 1, 'I': 2, 'S': 2}

def _independent(scan_dir, image_name):
    "Everything recomputed straight from the stored arrays and axis codes, without sail's reorientation."
    img = nib.load(str(scan_dir/image_name))
    codes = aff2axcodes(img.affine)
    masks = {f.name[:-7]: np.asarray(nib.load(str(f)).dataobj) for f in sorted((scan_dir/'segmentations').glob('*.nii.gz'))}
    return img, codes, masks

def _to_ras_index(stored_axis, idx, codes, n):
    "RAS slice index of stored index `idx` along `stored_axis`."
    return n - 1 - idx if codes[stored_axis] in 'LPI' else idx

@pytest.mark.parametrize('modality,scan,image', [('ct', 's0000', 'ct.nii.gz'), ('mri', 's0001', 'mri.nii.gz')])
def test_planes_counts_and_organ_flags(mini, tmp_path, modality, scan, image):
    ds = mini/('CT_Dataset_v201' if modality == 'ct' else 'MRI_Dataset_v200')
    meta = read_meta(ds/'meta.csv', modality).set_index('image_id')
    rows, info = slice_scan(ds/scan, modality, tmp_path, meta.study_type[scan])
    img, codes, masks = _independent(ds/scan, image)
    assert info['orientation'] == ''.join(codes)
    stored_axes = range(3) if modality == 'ct' else [int(np.argmin(img.shape))]
    expected_planes = {PLANES[RAS_AXIS_OF_CODE[codes[a]]] for a in stored_axes}
    assert set(rows.plane) == expected_planes
    assert len(masks) == len(CLASSES[modality])
    for a in stored_axes:
        plane = PLANES[RAS_AXIS_OF_CODE[codes[a]]]
        other = tuple(i for i in range(3) if i != a)
        present = {o: m.any(axis=other) for o, m in masks.items()}
        anyorgan = np.any(np.stack(list(present.values())), axis=0)
        hit = np.flatnonzero(anyorgan)
        kept_stored = np.arange(hit[0], hit[-1] + 1)                       # spec §4.1 trimming
        got = rows[rows.plane == plane].set_index('slice_index')
        assert len(got) == len(kept_stored) == info['planes'][plane]
        for organ, p in present.items():
            expect = {_to_ras_index(a, i, codes, img.shape[a]): bool(p[i]) for i in kept_stored}
            assert got[organ].to_dict() == expect, (plane, organ)
    assert not rows[[o for o in ORGANS if o not in CLASSES[modality]]].any().any()

def test_fixture_counts(mini, tmp_path):
    "Numbers a reader can check by hand: CT 122x101x30 in RAS at 3 mm; MRI 117x91x20 stored LPS."
    ct, ct_info = slice_scan(mini/'CT_Dataset_v201'/'s0000', 'ct', tmp_path, 'ct abdomen')
    mr, mr_info = slice_scan(mini/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, 'mri abdomen')
    assert ct_info['orientation'] == 'RAS' and mr_info['orientation'] == 'LPS'
    assert ct_info['planes'] == {'axial': 30, 'coronal': 76, 'sagittal': 101}
    assert mr_info['planes'] == {'axial': 20}
    assert ct.rows.tolist()[0] == 101 and ct.cols.tolist()[0] == 122    # axial: rows along A-P, columns along R-L

def test_ct_window_values_in_png(mini, tmp_path):
    "Every pixel of an axial PNG is the study-type window applied to the HU value at the matching voxel."
    ds = mini/'CT_Dataset_v201'
    rows, info = slice_scan(ds/'s0000', 'ct', tmp_path, 'ct abdomen')
    assert (info['window_centre'], info['window_width'], info['window_source']) == (50.0, 1000.0, 'study_type')
    hu = nib.load(str(ds/'s0000'/'ct.nii.gz')).get_fdata()                 # stored RAS (checked above)
    k = 12
    png = np.asarray(Image.open(tmp_path/rows.set_index('slice_id').image_path[f'ct_s0000_axial_{k:04d}']))
    X, Y = hu.shape[:2]
    r, c = np.meshgrid(np.arange(Y), np.arange(X), indexing='ij')
    expected_hu = hu[X - 1 - c, Y - 1 - r, k]                              # radiological display: right on the left, anterior up
    lo, hi = 50 - 500, 50 + 500
    expected = np.rint(np.clip((expected_hu - lo) / (hi - lo) * 255, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(png, expected)
    assert png.min() == 0 and png.max() == 255                              # air below, bone above the window

def test_mri_lps_display(mini, tmp_path):
    "The LPS-stored MRI is shown in radiological orientation: stored L runs along columns, stored P along rows."
    ds = mini/'MRI_Dataset_v200'
    rows, info = slice_scan(ds/'s0001', 'mri', tmp_path, 'mri abdomen')
    img = nib.load(str(ds/'s0001'/'mri.nii.gz'))
    assert aff2axcodes(img.affine) == ('L', 'P', 'S')
    vol = img.get_fdata()
    lo, hi = np.percentile(vol[vol > 0], [1, 99])
    assert (round(info['intensity_low'], 3), round(info['intensity_high'], 3)) == (round(lo, 3), round(hi, 3))
    for k in [0, 9, 19]:
        png = np.asarray(Image.open(tmp_path/f"images/mri/s0001/axial_{k:04d}.png"))
        # display column grows towards patient left = stored axis 0 (L); row grows posterior = stored axis 1 (P)
        expected = np.rint(np.clip((vol[:, :, k].T - lo) / (hi - lo) * 255, 0, 255)).astype(np.uint8)
        np.testing.assert_array_equal(png, expected)
    liver = np.asarray(nib.load(str(ds/'s0001'/'segmentations'/'liver.nii.gz')).dataobj)
    k = int(np.argmax(liver.sum(axis=(0, 1))))
    cols = np.flatnonzero(liver[:, :, k].T.any(0))
    assert cols.mean() < liver.shape[0] / 2                                 # the liver (patient right) on the image's left


def test_listed_scan_without_image_is_a_failed_scan(mini_copy, make_config, tmp_path):
    "A scan of meta.csv whose image file is missing gets a `failed` row in scans.parquet, like an unreadable one."
    from sail.slices import slice_dataset
    (mini_copy/'CT_Dataset_v201'/'s0000'/'ct.nii.gz').rename(tmp_path/'ct.nii.gz')
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    report = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    listed = pd.concat([pd.read_csv(mini_copy/d/'meta.csv', sep=';', dtype=str).assign(modality=m)
                        for m, d in [('ct', 'CT_Dataset_v201'), ('mri', 'MRI_Dataset_v200')]])
    scans = pd.read_parquet(tmp_path/'out'/'scans.parquet')
    assert sorted(zip(scans.modality, scans.image_id)) == sorted(zip(listed.modality, listed.image_id))
    assert scans.set_index('image_id').status.to_dict() == {'s0000': 'failed', 's0001': 'sliced'}
    assert (report.n_scans, report.n_sliced, report.n_failed, report.sliced_now) == (2, 1, 1, ['mri/s0001'])
    failures = pd.read_csv(tmp_path/'out'/'slice_failures.csv')
    assert failures[['item', 'stage']].values.tolist() == [['ct/s0000', 'list']]
    assert 's0000/ct.nii.gz not found (listed in meta.csv)' in failures.reason[0]
    slices = pd.read_parquet(tmp_path/'out'/'slices.parquet')
    assert set(slices.image_id) == {'s0001'}
    (tmp_path/'ct.nii.gz').rename(mini_copy/'CT_Dataset_v201'/'s0000'/'ct.nii.gz')    # the image comes back
    again = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (again.sliced_now, again.n_failed, again.n_sliced) == (['ct/s0000'], 0, 2)
    assert pd.read_parquet(tmp_path/'out'/'scans.parquet').status.tolist() == ['sliced', 'sliced']
