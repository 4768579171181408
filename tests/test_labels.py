"""The label map of every stored slice equals the fixture's masks, read independently with nibabel (every pixel);
overlaps follow the documented rule and are counted; label files are part of the per-scan artifacts."""
import json, os
from pathlib import Path
import numpy as np, nibabel as nib, pandas as pd, pytest
from PIL import Image
from conftest import MINI, shared_fixture
from sail.totalseg import ORGANS, label_name
from sail.slices import slice_dataset, load_slices, read_label_maps, scan_part

SCANS = {'ct': ('CT_Dataset_v201', 's0000', 'ct.nii.gz'), 'mri': ('MRI_Dataset_v200', 's0001', 'mri.nii.gz')}

def _nearest(n, m):
    "Output sample o of m taken from input floor(o (n-1)/(m-1) + 1/2): nearest, ties up, ndimage.zoom's positions."
    if m == 1 or n == 1: return np.zeros(m, int)
    return np.floor(np.arange(m) * (n - 1) / (m - 1) + 0.5).astype(int)

def _display(vol, axis, idx, zooms):
    """A RAS slice as stored: rows along the second remaining RAS axis, columns along the first, both reversed
    (anterior/superior up, patient right on the left); then nearest-neighbour resampling to square pixels."""
    r0, r1 = [i for i in range(3) if i != axis]
    s = np.take(vol, idx, axis=axis).T[::-1, ::-1]                 # (along r1, along r0)
    sp_rows, sp_cols = zooms[r1], zooms[r0]
    if abs(sp_rows - sp_cols) <= 1e-3: return s
    fine = min(sp_rows, sp_cols)
    m, k = int(round(s.shape[0] * sp_rows / fine)), int(round(s.shape[1] * sp_cols / fine))
    return s[np.ix_(_nearest(s.shape[0], m), _nearest(s.shape[1], k))]

def _expected(scan_dir):
    "Label volume (smaller structure wins, ties by ORGANS order), per-voxel class count and RAS zooms, from nibabel."
    img = nib.as_closest_canonical(nib.load(str(scan_dir/next(f for *_, f in SCANS.values() if (scan_dir/f).exists()))))
    zooms = tuple(np.sqrt((img.affine[:3, :3]**2).sum(0)))
    masks = {}
    for f in sorted((scan_dir/'segmentations').glob('*.nii.gz')):
        m = nib.as_closest_canonical(nib.load(str(f)))
        assert np.allclose(m.affine, img.affine, atol=1e-3)
        masks[f.name[:-7]] = np.asarray(m.dataobj) != 0
    hits = sum(m.astype(np.uint8) for m in masks.values())
    labels = np.zeros(img.shape, np.uint8)
    for name in sorted(masks, key=lambda o: (masks[o].sum(), ORGANS.index(o)), reverse=True):   # the winner paints last
        labels[masks[name]] = 1 + ORGANS.index(name)
    return labels, hits, zooms

def _modify(root):
    """Make the copy harder: CT's gallbladder and MRI's pancreas spill into the liver (overlaps), and the MRI's stored
    first axis gets 2 mm voxels instead of 3 (its axial slices are resampled in-plane)."""
    for mod, shift in [('ct', 'gallbladder'), ('mri', 'pancreas')]:
        folder, sid, image = SCANS[mod]
        seg = root/folder/sid/'segmentations'
        liver, small = nib.load(str(seg/'liver.nii.gz')), nib.load(str(seg/f'{shift}.nii.gz'))
        lv = np.asarray(liver.dataobj) != 0
        idx = np.argwhere(lv); lo, hi = idx.min(0), idx.max(0); mid = (lo + hi) // 2
        spill = np.zeros_like(lv); spill[lo[0]:mid[0], lo[1]:mid[1], lo[2]:hi[2] + 1] = True
        arr = ((np.asarray(small.dataobj) != 0) | (spill & lv)).astype(np.asarray(small.dataobj).dtype)
        nib.save(nib.Nifti1Image(arr, small.affine, small.header), seg/f'{shift}.nii.gz')
    folder, sid, image = SCANS['mri']
    d = root/folder/sid
    for f in [d/image, *sorted((d/'segmentations').glob('*.nii.gz'))]:
        im = nib.load(str(f)); aff = im.affine.copy(); aff[:3, 0] *= 2/3
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj), aff, im.header), f)

@pytest.fixture(scope='module')
def sliced(tmp_path_factory):
    "The fixture, and a modified copy of it, each sliced into its own data folder: {variant: (root, data, config)}."
    import shutil
    from conftest import write_config
    from sail.config import load_config
    mini = shared_fixture(MINI, 'CT_Dataset_v201/meta.csv')
    tmp = tmp_path_factory.mktemp('labels')
    shutil.copytree(mini, tmp/'modified'); _modify(tmp/'modified')
    out = {}
    for variant, root in [('fixture', mini), ('modified', tmp/'modified')]:
        cfg = load_config(write_config(tmp, f'_pytest_labels_{variant}',
                                       data=dict(totalseg_root=str(root), dir=str(tmp/f'data-{variant}'))))
        slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
        out[variant] = (Path(root), tmp/f'data-{variant}', cfg)
    return out

@pytest.mark.parametrize('variant', ['fixture', 'modified'])
def test_every_pixel_of_every_label_map(sliced, variant):
    root, data, _ = sliced[variant]
    table = load_slices(data)
    maps = read_label_maps(data, table)
    assert list(maps) == table.slice_id.tolist()
    n_pixels, n_overlap = 0, 0
    for mod, (folder, sid, _) in SCANS.items():
        labels, hits, zooms = _expected(root/folder/sid)
        rows = table[(table.modality == mod) & (table.image_id == sid)]
        assert len(rows)
        for r in rows.itertuples():
            axis = ['sagittal', 'coronal', 'axial'].index(r.plane)
            got = maps[r.slice_id]
            png = np.asarray(Image.open(data/r.image_path))
            assert got.dtype == np.uint8 and got.shape == png.shape == (r.rows, r.cols), r.slice_id
            np.testing.assert_array_equal(got, _display(labels, axis, r.slice_index, zooms), err_msg=r.slice_id)
            contested = int((_display(hits, axis, r.slice_index, zooms) > 1).sum())
            assert r.overlap_px == contested, r.slice_id
            n_pixels += got.size; n_overlap += contested
    assert n_pixels > 100_000
    if variant == 'fixture': assert n_overlap == 0                     # the fixture's masks do not overlap
    else: assert n_overlap > 100                                       # the modified copy's do, and are counted
    scans = pd.read_parquet(data/'scans.parquet').set_index('image_id')
    assert scans.overlap_px.sum() == table.overlap_px.sum()

def test_overlap_rule_smaller_structure_wins(sliced):
    "Where the modified CT's gallbladder spills into the liver, the (smaller) gallbladder keeps the pixels."
    root, data, _ = sliced['modified']
    table = load_slices(data); ct = table[table.modality == 'ct']
    maps = read_label_maps(data, ct[ct.overlap_px > 0])
    gb, liver = 1 + ORGANS.index('gallbladder'), 1 + ORGANS.index('liver')
    assert len(maps) and all((m == gb).sum() >= r for m, r in zip(maps.values(), ct[ct.overlap_px > 0].overlap_px))
    assert label_name(gb) == 'gallbladder' and any((m == liver).any() for m in maps.values())

def test_mri_resampled_shapes_match_pngs(sliced):
    "The modified MRI (2 x 3 mm in-plane) is resampled: its maps keep the PNG's shape and only true class values."
    root, data, _ = sliced['modified']
    mr = load_slices(data).query("modality == 'mri'")
    assert (mr.rows != 91).any() or (mr.cols != 117).any()             # resampled from 117 x 91 voxels
    for m in read_label_maps(data, mr).values():
        assert set(np.unique(m)) <= {0} | {1 + i for i in range(len(ORGANS))}

def test_labels_are_part_of_the_scan_artifact(sliced):
    root, data, cfg = sliced['fixture']
    rec = scan_part(data, 'ct', 's0000').record()
    assert 'labels/ct/s0000.npz' in rec['files'] and rec['inputs']['version'] >= 2
    assert not list((data/'labels').rglob('.*tmp*'))                   # no temporary file left behind

def test_rerun_redoes_exactly_the_changed_scan(sliced):
    "Unchanged inputs: nothing redone. A touched mask: that scan only. A part sliced before label maps: redone once."
    import shutil
    root, data, cfg = sliced['modified']
    again = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    assert again.sliced_now == []
    mask = root/'CT_Dataset_v201'/'s0000'/'segmentations'/'liver.nii.gz'
    st = mask.stat(); os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    before = (data/'labels'/'mri'/'s0001.npz').stat().st_mtime_ns
    ct_bytes = (data/'labels'/'ct'/'s0000.npz').read_bytes()
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0000']
    assert (data/'labels'/'mri'/'s0001.npz').stat().st_mtime_ns == before
    assert (data/'labels'/'ct'/'s0000.npz').read_bytes() == ct_bytes          # re-sliced: byte-identical label file
    side = scan_part(data, 'mri', 's0001').sidecar                     # as written before label maps existed
    rec = json.loads(side.read_text()); rec['inputs'].pop('version'); side.write_text(json.dumps(rec))
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['mri/s0001']
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == []
    (data/'labels'/'ct'/'s0000.npz').unlink()                          # a lost label file: that scan is redone
    assert slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute).sliced_now == ['ct/s0000']

def test_clear_errors(sliced):
    root, data, _ = sliced['fixture']
    rows = load_slices(data).head(1)
    with pytest.raises(KeyError, match=r"s0000\.npz: no label map for slice id\(s\) \['ct_s0000_axial_9999'\]"):
        read_label_maps(data, rows.assign(slice_id='ct_s0000_axial_9999'))
    with pytest.raises(FileNotFoundError, match=r"labels/ct/s0000\.npz: label maps of scan ct/s0000 missing"):
        read_label_maps(data/'nowhere', rows)
    with pytest.raises(ValueError, match='expected 0 \\(background\\) to 121'):
        label_name(200)
