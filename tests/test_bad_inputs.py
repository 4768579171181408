"Each bad input gets a clear error naming the file/key, or a recorded per-scan failure."
import gzip, shutil, json
import numpy as np, nibabel as nib, pandas as pd, pytest
from sail.core import ConfigError, load_config
from sail.totalseg import DataFormatError, ScanError, read_meta, slice_scan, load_canonical
from sail.slices import slice_dataset, list_scans

def test_missing_meta_csv(mini_copy, make_config, tmp_path):
    (mini_copy/'CT_Dataset_v201'/'meta.csv').unlink()
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    with pytest.raises(DataFormatError, match=r"CT_Dataset_v201/meta.csv: meta.csv not found"):
        slice_dataset(cfg)

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
    summary = slice_dataset(cfg)
    assert summary['n_failed'] == 0
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
    summary = slice_dataset(cfg)
    assert (summary['n_scans'], summary['n_sliced'], summary['n_failed']) == (2, 1, 1)
    failures = pd.read_csv(tmp_path/'out'/'slice_failures.csv')
    assert failures.item.tolist() == ['ct/s0000'] and 'unreadable NIfTI' in failures.reason[0]
    scans = pd.read_parquet(tmp_path/'out'/'scans.parquet')
    assert scans.set_index('image_id').status.to_dict() == {'s0000': 'failed', 's0001': 'sliced'}
    with pytest.raises(DataFormatError):                                     # strict: the failure stops the step
        slice_dataset(cfg, force=True, strict=True)

def test_mask_shape_mismatch_is_resampled(mini_copy, tmp_path):
    seg = mini_copy/'CT_Dataset_v201'/'s0000'/'segmentations'/'liver.nii.gz'
    m = nib.load(str(seg)); arr = np.asarray(m.dataobj)
    half = arr[::2, ::2, ::2]                                               # a coarser grid covering the same box
    aff = m.affine.copy(); aff[:3, :3] *= 2
    nib.save(nib.Nifti1Image(half, aff), str(seg))
    rows, info = slice_scan(mini_copy/'CT_Dataset_v201'/'s0000', 'ct', tmp_path, 'ct abdomen', write_images=False)
    assert info['n_masks_resampled'] == 1
    z_true = np.flatnonzero(arr.any(axis=(0, 1)))
    z_got = rows[(rows.plane == 'axial') & rows.liver].slice_index.to_numpy()
    assert abs(z_got.min() - z_true.min()) <= 1 and abs(z_got.max() - z_true.max()) <= 1

def test_empty_segmentations_folder(mini_copy, make_config, tmp_path):
    seg = mini_copy/'MRI_Dataset_v200'/'s0001'/'segmentations'
    shutil.rmtree(seg); seg.mkdir()
    with pytest.raises(ScanError, match=r"s0001/segmentations: no masks"):
        slice_scan(mini_copy/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, write_images=False)
    cfg = make_config(data={'totalseg_root': str(mini_copy), 'dir': str(tmp_path/'out')})
    assert slice_dataset(cfg)['n_failed'] == 1

def test_unknown_mask_name(mini_copy, tmp_path):
    seg = mini_copy/'MRI_Dataset_v200'/'s0001'/'segmentations'
    shutil.copy(seg/'liver.nii.gz', seg/'livr.nii.gz')
    with pytest.raises(ScanError, match=r"unknown class file\(s\) \['livr.nii.gz'\]"):
        slice_scan(mini_copy/'MRI_Dataset_v200'/'s0001', 'mri', tmp_path, write_images=False)

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
