"The offline demo dataset: TotalSegmentator format, the promised variety, determinism, atomic rebuilds."
import json
import numpy as np, nibabel as nib, pandas as pd, pytest
from sail.config import DemoConfig
from sail.demo import build_demo
from sail.totalseg import CLASSES, META_COLUMNS, DATASET_DIRS, IMAGE_FILES, read_meta, age_bin, CT_WINDOWS

@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')/'TotalSegmentator'
    build_demo(root, DemoConfig(), workers=2)
    return root

def _meta(root):
    return pd.concat([read_meta(root/DATASET_DIRS[m]/'meta.csv', m) for m in ('ct', 'mri')], ignore_index=True)

def test_format_and_variety(demo):
    meta = _meta(demo)
    assert len(meta) >= 40 and set(meta.modality) == {'ct', 'mri'}
    inst = set(meta.institute.dropna())
    assert len(inst) >= 8 and {'A', 'D', 'E'} <= inst
    assert set(meta.gender.dropna()) == {'f', 'm'}
    assert set(age_bin(meta.age).dropna()) == {'<40', '40-60', '60-80', '>=80'}
    held = meta[meta.institute.isin(['A', 'D', 'E'])]
    rest = meta[~meta.institute.isin(['A', 'D', 'E'])]
    for part in (held, rest): assert set(part.modality) == {'ct', 'mri'} and set(part.gender.dropna()) == {'f', 'm'}
    for m in ('ct', 'mri'):
        header = (demo/DATASET_DIRS[m]/'meta.csv').read_text().splitlines()[0].split(';')
        assert header == META_COLUMNS[m]
    assert any(('ct ' + s if not s.startswith('ct ') else s) not in CT_WINDOWS for s in meta[meta.modality == 'ct'].study_type)
    assert 'synthetic' in (demo/'README.md').read_text().lower()

def test_every_scan_has_all_class_masks_on_its_grid(demo):
    meta = _meta(demo)
    for r in meta.sample(6, random_state=0).itertuples():
        d = demo/DATASET_DIRS[r.modality]/r.image_id
        img = nib.load(str(d/IMAGE_FILES[r.modality]))
        files = sorted(p.name[:-7] for p in (d/'segmentations').glob('*.nii.gz'))
        assert files == sorted(CLASSES[r.modality])
        nonempty = 0
        for f in (d/'segmentations').glob('*.nii.gz'):
            m = nib.load(str(f))
            assert m.shape == img.shape and np.allclose(m.affine, img.affine) and m.get_data_dtype() == np.uint8
            nonempty += bool(np.asarray(m.dataobj).any())
        assert nonempty >= 1

def test_deterministic_and_reused(demo, tmp_path):
    other = tmp_path/'TotalSegmentator'
    small = DemoConfig(ct_torso=2, mri_torso=2, ct_head=1, mri_head=1, voxel_mm=10.0, seed=5)
    build_demo(other, small, workers=1)
    again = tmp_path/'again'
    build_demo(again, small, workers=2)
    for m in ('ct', 'mri'):
        assert (other/DATASET_DIRS[m]/'meta.csv').read_text() == (again/DATASET_DIRS[m]/'meta.csv').read_text()
        for d in sorted((other/DATASET_DIRS[m]).glob('s*')):
            a = np.asarray(nib.load(str(d/IMAGE_FILES[m])).dataobj)
            b = np.asarray(nib.load(str(again/DATASET_DIRS[m]/d.name/IMAGE_FILES[m])).dataobj)
            np.testing.assert_array_equal(a, b)
    stamp = json.loads((other/'demo.json').read_text())
    assert build_demo(other, small).get('reused') is True                  # same config: nothing rebuilt
    assert json.loads((other/'demo.json').read_text()) == stamp
    changed = build_demo(other, DemoConfig(ct_torso=2, mri_torso=2, ct_head=1, mri_head=1, voxel_mm=10.0, seed=6))
    assert not changed.get('reused')
