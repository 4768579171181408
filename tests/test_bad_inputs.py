"Each bad input gets a clear error naming the file/key, or a recorded per-scan failure."
import gzip, shutil, json, re
import numpy as np, nibabel as nib, pandas as pd, pytest
from sail.config import ConfigError, load_config
from sail.totalseg import DataFormatError, ScanError, read_meta, slice_scan, load_canonical
from sail.slices import slice_dataset, list_scans

def test_missing_meta_csv(mini_copy, make_config, tmp_path):
    (mini_copy/'CT_Dataset_v201'/'meta.csv').unlink()
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    with pytest.raises(DataFormatError, match=r"CT_Dataset_v201/meta.csv: meta.csv not found"):
        slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)

def test_meta_missing_column(mini_copy):
    p = mini_copy/'MRI_Dataset_v200'/'meta.csv'
    df = pd.read_csv(p, sep=';').drop(columns=['scanning_sequence'])
    df.to_csv(p, sep=';', index=False)
    with pytest.raises(DataFormatError, match=r"MRI_Dataset_v200/meta.csv: missing column\(s\) \['scanning_sequence'\]"):
        read_meta(p, 'mri')

def test_meta_bad_number_names_row_and_column(mini_copy):
    p = mini_copy/'CT_Dataset_v201'/'meta.csv'
    p.write_text(p.read_text().replace(';120.0;', ';one-twenty;'))
    with pytest.raises(DataFormatError, match=r"row 2 \(image_id s0000\), column 'kvp'"):
        read_meta(p, 'ct')

def test_unknown_study_type_gets_default_window(mini_copy, make_config, tmp_path):
    p = mini_copy/'CT_Dataset_v201'/'meta.csv'
    p.write_text(p.read_text().replace('ct abdomen', 'ct knee'))
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out'), 'modalities': ['ct']},
                      slices={'default_window': [40, 400]})
    summary = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert summary.n_failed == 0
    scans = pd.read_parquet(tmp_path/'out'/'scans.parquet')
    assert scans.loc[0, ['window_centre', 'window_width', 'window_source']].tolist() == [40.0, 400.0, 'default']
    slices = pd.read_parquet(tmp_path/'out'/'slices.parquet')
    assert set(slices.window_source) == {'default'} and set(slices.study_type) == {'ct knee'}

def test_truncated_nifti_is_recorded_and_reported(mini_copy, make_config, tmp_path):
    img = mini_copy/'CT_Dataset_v201'/'s0000'/'ct.nii.gz'
    img.write_bytes(img.read_bytes()[:5000])
    with pytest.raises(DataFormatError, match=r"s0000/ct.nii.gz: unreadable NIfTI"):
        load_canonical(img)
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    summary = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (summary.n_scans, summary.n_sliced, summary.n_failed) == (2, 1, 1)
    failures = pd.read_csv(tmp_path/'out'/'slice_failures.csv')
    assert failures.item.tolist() == ['ct/s0000'] and 'unreadable NIfTI' in failures.reason[0]
    scans = pd.read_parquet(tmp_path/'out'/'scans.parquet')
    assert scans.set_index('image_id').status.to_dict() == {'s0000': 'failed', 's0001': 'sliced'}
    with pytest.raises(DataFormatError):                                     # strict: the failure stops the step
        slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute, force=True, strict=True)

CT_SCAN, MRI_SCAN = 'CT_Dataset_v201/s0000', 'MRI_Dataset_v200/s0001'

def _slice(root, scan, tmp_path):
    "slice_scan one of the mini fixture's scans (rows only)."
    return slice_scan(root/scan, 'ct' if scan == CT_SCAN else 'mri', tmp_path/'rows', 'ct abdomen' if scan == CT_SCAN else None,
                      write_images=False)

def _recorded_failure(root, make_config, tmp_path, failed, reason):
    "Run the slicing step: `failed` ('ct/s0000' or 'mri/s0001') is recorded with `reason`, the other scan is sliced."
    cfg = make_config(data={'totalseg_root': str(root), 'dir': str(tmp_path/'out')})
    summary = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert (summary.n_scans, summary.n_sliced, summary.n_failed) == (2, 1, 1)
    failures = pd.read_csv(tmp_path/'out'/'slice_failures.csv')
    assert failures.item.tolist() == [failed] and failures.stage.tolist() == ['slice']
    assert re.search(reason, failures.reason[0]), failures.reason[0]
    scans = pd.read_parquet(tmp_path/'out'/'scans.parquet').set_index('image_id').status.to_dict()
    ok = {'ct/s0000': 's0001', 'mri/s0001': 's0000'}[failed]
    assert scans == {failed.split('/')[1]: 'failed', ok: 'sliced'}
    assert len(pd.read_parquet(tmp_path/'out'/'slices.parquet').query('image_id == @ok')) > 0

def _resave(path, arr=None, affine=None):
    "Rewrite a NIfTI file with a new array and/or affine (its dtype is the array's)."
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj) if arr is None else arr
    nib.save(nib.Nifti1Image(arr, img.affine if affine is None else affine), str(path))

def test_missing_class_mask(mini_copy, make_config, tmp_path):
    (mini_copy/CT_SCAN/'segmentations'/'liver.nii.gz').unlink()
    with pytest.raises(ScanError, match=r"s0000/segmentations: 1 of the 117 CT class masks missing: \['liver.nii.gz'\]; every class has its file"):
        _slice(mini_copy, CT_SCAN, tmp_path)
    _recorded_failure(mini_copy, make_config, tmp_path, 'ct/s0000', r"ScanError: .*s0000/segmentations: 1 of the 117 CT class masks missing")

def test_many_missing_class_masks_are_counted(mini_copy, tmp_path):
    from sail.totalseg import MRI_CLASSES
    for c in MRI_CLASSES[-15:]: (mini_copy/MRI_SCAN/'segmentations'/f'{c}.nii.gz').unlink()
    shown = ', '.join(repr(f'{c}.nii.gz') for c in MRI_CLASSES[-15:-5])
    with pytest.raises(ScanError, match=re.escape(f"s0001/segmentations: 15 of the 50 MRI class masks missing: [{shown}] and 5 more;")):
        _slice(mini_copy, MRI_SCAN, tmp_path)

def test_nonfinite_image_voxels(mini_copy, make_config, tmp_path):
    img = mini_copy/MRI_SCAN/'mri.nii.gz'
    arr = nib.load(str(img)).get_fdata(dtype=np.float32)
    arr[50, 40, 3:7] = np.nan; arr[10, 10, :3] = [np.inf, -np.inf, np.inf]
    _resave(img, arr)
    with pytest.raises(DataFormatError, match=r"s0001/mri.nii.gz: 7 non-finite voxel\(s\) \(4 NaN, 3 infinite\) of 212940; expected finite"):
        _slice(mini_copy, MRI_SCAN, tmp_path)
    _recorded_failure(mini_copy, make_config, tmp_path, 'mri/s0001', r"DataFormatError: .*s0001/mri.nii.gz: 7 non-finite voxel")

def test_mask_shape_mismatch_is_an_error(mini_copy, make_config, tmp_path):
    seg = mini_copy/CT_SCAN/'segmentations'/'liver.nii.gz'
    m = nib.load(str(seg)); arr = np.asarray(m.dataobj)
    aff = m.affine.copy(); aff[:3, :3] *= 2                                  # a coarser grid covering the same box
    _resave(seg, arr[::2, ::2, ::2], aff)
    with pytest.raises(DataFormatError, match=r"s0000/segmentations/liver.nii.gz: mask shape \(61, 51, 15\) differs from the image's \(122, 101, 30\)"):
        _slice(mini_copy, CT_SCAN, tmp_path)
    _recorded_failure(mini_copy, make_config, tmp_path, 'ct/s0000', r"liver.nii.gz: mask shape \(61, 51, 15\) differs")

def test_shifted_mask_affine(mini_copy, tmp_path):
    from sail.totalseg import AFFINE_TOL_MM
    seg = mini_copy/MRI_SCAN/'segmentations'
    aff = nib.load(str(seg/'spleen.nii.gz')).affine
    tiny = aff.copy(); tiny[:3, 3] += AFFINE_TOL_MM/10                       # header float noise: accepted
    _resave(seg/'spleen.nii.gz', affine=tiny)
    rows, info = _slice(mini_copy, MRI_SCAN, tmp_path)
    assert 0 < info['mask_offset_mm'] <= AFFINE_TOL_MM and rows.spleen.any()
    shifted = aff.copy(); shifted[0, 3] += 30                                 # 30 mm along the first axis
    _resave(seg/'liver.nii.gz', affine=shifted)
    with pytest.raises(DataFormatError, match=r"s0001/segmentations/liver.nii.gz: mask grid is 30 mm off the image's .*tolerance AFFINE_TOL_MM = 0.1 mm"):
        _slice(mini_copy, MRI_SCAN, tmp_path)

def test_oblique_image(mini_copy, make_config, tmp_path):
    img = mini_copy/CT_SCAN/'ct.nii.gz'
    aff = nib.load(str(img)).affine
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = aff.copy(); rot[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]   # rotated 30° about S
    _resave(img, affine=rot)
    with pytest.raises(DataFormatError, match=r"s0000/ct.nii.gz: oblique image: a voxel axis is 30.0° off the nearest patient axis \(tolerance OBLIQUE_TOL_DEG = 10.0°\)"):
        _slice(mini_copy, CT_SCAN, tmp_path)
    _recorded_failure(mini_copy, make_config, tmp_path, 'ct/s0000', r"s0000/ct.nii.gz: oblique image")

def test_non_binary_mask(mini_copy, make_config, tmp_path):
    seg = mini_copy/MRI_SCAN/'segmentations'
    liver = np.asarray(nib.load(str(seg/'liver.nii.gz')).dataobj)
    _resave(seg/'liver.nii.gz', liver.astype(np.float32))                    # 0/1 in any numeric dtype is fine
    _resave(seg/'spleen.nii.gz', np.asarray(nib.load(str(seg/'spleen.nii.gz')).dataobj).astype(np.int16))
    rows, _ = _slice(mini_copy, MRI_SCAN, tmp_path)
    assert rows.liver.any() and rows.spleen.any()
    _resave(seg/'liver.nii.gz', liver*2)                                       # 0/2 labels: a cast to uint8 kept them, a 0.5 would vanish
    with pytest.raises(DataFormatError, match=r"s0001/segmentations/liver.nii.gz: mask values must be 0 or 1; 18480 voxel\(s\) hold 1 other value\(s\) \[2\]"):
        _slice(mini_copy, MRI_SCAN, tmp_path)
    _resave(seg/'liver.nii.gz', liver.astype(np.float32)/2)
    with pytest.raises(DataFormatError, match=r"liver.nii.gz: mask values must be 0 or 1; 18480 voxel\(s\) hold 1 other value\(s\) \[0.5\]"):
        _slice(mini_copy, MRI_SCAN, tmp_path)
    labels = liver.astype(np.float32); labels[liver > 0] = np.resize([0.5, 2, 3, 4, 5, 6, 7], int(liver.sum()))
    _resave(seg/'liver.nii.gz', labels)
    with pytest.raises(DataFormatError, match=r"hold 7 other value\(s\) \[0.5, 2.0, 3.0, 4.0, 5.0\] and 2 more$"):
        _slice(mini_copy, MRI_SCAN, tmp_path)
    _recorded_failure(mini_copy, make_config, tmp_path, 'mri/s0001', r"liver.nii.gz: mask values must be 0 or 1")

def test_empty_segmentations_folder(mini_copy, make_config, tmp_path):
    seg = mini_copy/'MRI_Dataset_v200'/'s0001'/'segmentations'
    shutil.rmtree(seg); seg.mkdir()
    with pytest.raises(ScanError, match=r"s0001/segmentations: no masks"):
        slice_scan(mini_copy/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, write_images=False)
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).n_failed == 1

def test_unknown_mask_name(mini_copy, tmp_path):
    seg = mini_copy/'MRI_Dataset_v200'/'s0001'/'segmentations'
    shutil.copy(seg/'liver.nii.gz', seg/'livr.nii.gz')
    with pytest.raises(ScanError, match=r"unknown class file\(s\) \['livr.nii.gz'\]"):
        slice_scan(mini_copy/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, write_images=False)

def test_unknown_mask_names_are_counted(mini_copy, tmp_path):
    seg = mini_copy/'MRI_Dataset_v200'/'s0001'/'segmentations'
    for i in range(13): shutil.copy(seg/'liver.nii.gz', seg/f'bogus_{i:02d}.nii.gz')
    shown = ', '.join(repr(f'bogus_{i:02d}.nii.gz') for i in range(10))
    with pytest.raises(ScanError, match=re.escape(f"unknown class file(s) [{shown}] and 3 more; expected TotalSegmentator MRI class names")):
        slice_scan(mini_copy/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, write_images=False)

def test_meta_duplicate_image_id_names_both_rows(mini_copy):
    p = mini_copy/'CT_Dataset_v201'/'meta.csv'
    header, row = p.read_text().splitlines()
    p.write_text('\n'.join([header, row, row.replace('s0000', 's0009'), row]) + '\n')   # s0000 on lines 2 and 4
    with pytest.raises(DataFormatError, match=r"CT_Dataset_v201/meta.csv: image_id 's0000' appears more than once, in rows 2 and 4$"):
        read_meta(p, 'ct')

def test_missing_dataset_folder(mini_copy, make_config, tmp_path):
    shutil.rmtree(mini_copy/'MRI_Dataset_v200')
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    with pytest.raises(DataFormatError, match=r"MRI_Dataset_v200: dataset folder not found"):
        list_scans(mini_copy, cfg.data.modalities)

@pytest.mark.parametrize('text,match', [
    ("name: x\nsplit: {test_institutes: [A, D\n", r"malformed YAML at line \d+"),
    ("name: x\nslices: {trim_emtpy: true}\n", r"unknown key 'slices.trim_emtpy'"),
    ("name: x\nworkers: two\n", r"'workers' must be int, got str 'two'"),
    ("name: x\nsplit: {val_fraction: '0.2'}\n", r"'split.val_fraction' must be float"),
    ("seed: 1\n", r"missing required key 'name'"),
    ("name: x\ndata: {totalseg_root: /no/such/TotalSegmentator}\n", r"'data.totalseg_root' = '/no/such/TotalSegmentator' does not exist"),
    ("- just\n- a list\n", r"expected a mapping"),
])
def test_bad_config(tmp_path, text, match):
    p = tmp_path/'bad.yaml'; p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)

def test_shipped_configs_load():
    for name in ['demo', 'smoke']: assert load_config(name).demo is not None
    assert load_config('paper', check_paths=False).data.totalseg_root == 'TotalSegmentator'
