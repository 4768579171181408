"""sail.focalnet against BiomedParse's own backbone code (the focalnet-mini fixture), the real huggingface_hub loading
path on an offline hub cache, the named errors of the loader, and the spec §3.3 random-weight baseline.
(The notebook nbs/04b_focalnet.ipynb has the lessons; these are the checks that must hold in CI.)"""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
from sail.focalnet import (FOCALNET_LARGE, BackboneMismatch, BiomedParseUnavailable, CheckpointRefused, FocalBlock,
                           FocalNet, FocalNetSize, biomedparse_embedding, biomedparse_preprocess,
                           biomedparse_weights_path, find_backbone, focalnet_from_state_dict, random_focalnet,
                           read_weights)
from conftest import ROOT, SHARED, shared_fixture

FOCAL_MINI = SHARED/'data'/'focalnet-mini'
TINY = FocalNetSize(16, (1, 1, 2, 1))
COMMIT = 'c0ffee' + '0' * 34


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "pytest runs two workers on two cores; more than one intra-op thread each oversubscribes them."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def focal_mini() -> Path:
    "BiomedParse's own backbone outputs."
    return shared_fixture(FOCAL_MINI, 'focalnet_tiny_io.safetensors')


@pytest.fixture(scope='module')
def tiny_sd(focal_mini):
    from safetensors.torch import load_file
    return load_file(focal_mini/'focalnet_tiny.safetensors')


@pytest.fixture(scope='module')
def io(focal_mini):
    from safetensors.torch import load_file
    return load_file(focal_mini/'focalnet_tiny_io.safetensors')


# ------------------------------------------------------------------------------------ the module against the original
def test_tiny_state_dict_loads_strictly_and_reproduces_biomedparse(tiny_sd, io):
    model = FocalNet(*TINY).eval()
    model.load_state_dict(tiny_sd, strict=True)
    assert sorted(model.state_dict()) == sorted(tiny_sd)
    with torch.no_grad(): out = model(io['input'])
    torch.testing.assert_close(out.tokens, io['norm3_tokens'], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.res5, io['res5'], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.res2, io['res2'], atol=1e-5, rtol=0)
    torch.testing.assert_close(biomedparse_embedding(model, io['input']), io['norm3_tokens'].mean(1), atol=1e-5, rtol=0)


def test_full_size_has_exactly_the_originals_keys_and_shapes(focal_mini):
    expected = json.loads((focal_mini/'focalnet_large_keys.json').read_text())
    with torch.device('meta'): large = FocalNet(*FOCALNET_LARGE)
    got = {k: list(v.shape) for k, v in large.state_dict().items()}
    assert list(got.items()) == list(expected.items())                 # names, order and shapes
    assert len(got) == 504 and sum(p.numel() for p in large.parameters()) == 205_746_936
    with torch.device('meta'): out = large(torch.empty(2, 3, 1024, 1024))
    assert out.tokens.shape == (2, 1024, 1536) and out.res2.shape == (2, 192, 256, 256)


@pytest.mark.parametrize('h, w', [(96, 96), (97, 130), (33, 64)])
def test_grids_follow_the_originals_padding_rules(h, w):
    "Stem: pad to a multiple of 4, 7x7/4 pad 2; downsampling: pad to even, 3x3/2 pad 1 -> ceil halves."
    with torch.no_grad(): out = random_focalnet(0, *TINY)(torch.zeros(1, 3, h, w))
    gh, gw = -(-h // 4), -(-w // 4)
    for r in out[:4]:
        assert r.shape[-2:] == (gh, gw)
        gh, gw = -(-gh // 2), -(-gw // 2)


# ----------------------------------------------------------------------------------------------- preprocessing
def test_preprocess_equals_the_reference_extractor():
    "spec §3.2: stack HWC 0-255 float, BCHW, antialiased bilinear resize when the size differs, then (x - mean) / std."
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 50, 70, 3), dtype=torch.uint8, generator=g)
    x = rgb.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(64, 64), mode='bilinear', align_corners=False, antialias=True)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])   # spec §3.2
    ref = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(biomedparse_preprocess(rgb, size=64), ref)
    grey = rgb[..., 0]
    torch.testing.assert_close(biomedparse_preprocess(grey, size=None),
                               biomedparse_preprocess(grey[..., None].expand(-1, -1, -1, 3).contiguous(), size=None))
    assert biomedparse_preprocess(torch.zeros(1, 64, 64, dtype=torch.uint8), size=64).shape == (1, 3, 64, 64)


# ------------------------------------------------------------------------------------------- random-weight baseline
def test_random_baseline_follows_spec_3_3():
    state = torch.random.get_rng_state()
    a, b, c = random_focalnet(42, *TINY), random_focalnet(42, *TINY), random_focalnet(7, *TINY)
    assert torch.equal(torch.random.get_rng_state(), state)            # a private generator: global RNG untouched
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.layers[0].blocks[0].modulation.f.weight, c.layers[0].blocks[0].modulation.f.weight)
    weights = []
    for m in a.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            weights.append(m.weight.flatten())
            assert m.bias is None or not m.bias.any()
        elif isinstance(m, nn.LayerNorm): assert (m.weight == 1).all() and not m.bias.any()
        elif isinstance(m, FocalBlock): assert (m.gamma_1 == 1e-4).all() and (m.gamma_2 == 1e-4).all()
    w = torch.cat(weights)
    assert abs(w.std().item() - 0.02) < 5e-4 and abs(w.mean().item()) < 5e-4 and w.abs().max() <= 2
    assert a.training is False


def test_random_baseline_embeds_slices():
    model = random_focalnet(0, *TINY)
    e = biomedparse_embedding(model, biomedparse_preprocess(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8), 64))
    assert e.shape == (3, 128) and e.dtype == torch.float32 and torch.isfinite(e).all()


# ----------------------------------------------------------------------------------------------- the checkpoint
def fake_checkpoint(sd:dict, prefix:str='model.backbone.')->dict:
    "A stand-in for biomedparse_v1.pt: the backbone under `prefix`, other modules' tensors and a non-tensor entry."
    return {f'{prefix}{k}': v for k, v in sd.items()} | {
        'model.sem_seg_head.pixel_decoder.layer_1.weight': torch.zeros(8, 8),
        'model.sem_seg_head.predictor.lang_encoder.lang_proj': torch.zeros(4, 4), 'model.backbone_proj': torch.zeros(3),
        'model.xpatch_embed.proj.weight': torch.zeros(1)}


def write_hub_cache(root:Path, ckpt, commit:str=COMMIT)->Path:
    "microsoft/BiomedParse's biomedparse_v1.pt in the hub cache layout: refs/main -> commit, snapshots/<commit>/file."
    repo = root/'models--microsoft--BiomedParse'
    (repo/'refs').mkdir(parents=True); (repo/'refs'/'main').write_text(commit)
    (repo/'snapshots'/commit).mkdir(parents=True)
    torch.save(ckpt, repo/'snapshots'/commit/'biomedparse_v1.pt')
    return root


LOAD = textwrap.dedent("""
    import json, sys, torch
    from sail.focalnet import load_biomedparse_backbone, biomedparse_embedding, BiomedParseUnavailable
    try: m = load_biomedparse_backbone(**json.loads(sys.argv[1]))
    except BiomedParseUnavailable as e: print(json.dumps(dict(error=type(e).__name__, message=str(e)))); sys.exit(0)
    x = torch.load(sys.argv[2]) if len(sys.argv) > 2 else None
    emb = biomedparse_embedding(m, x).tolist() if x is not None else None
    print(json.dumps(dict(embed_dim=m.embed_dim, depths=m.depths, src=m.weights_source._asdict(), emb=emb)))
""")


def load_offline(cache:Path, tmp_path:Path, x=None, **kwargs)->dict:
    "load_biomedparse_backbone(**kwargs) in a fresh process whose hub cache is `cache`, with HF_HUB_OFFLINE=1."
    args = [json.dumps(kwargs)]
    if x is not None: torch.save(x, tmp_path/'x.pt'); args.append(str(tmp_path/'x.pt'))
    env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    env |= dict(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path/'hf-home'))
    r = subprocess.run([sys.executable, '-c', LOAD, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_loader_reads_the_hub_cache_through_huggingface_hub(tmp_path, tiny_sd, io):
    cache = write_hub_cache(tmp_path/'hub', fake_checkpoint(tiny_sd) | {'epoch': 3})
    got = load_offline(cache, tmp_path, io['input'])
    assert (got['embed_dim'], got['depths']) == (16, [1, 1, 2, 1])          # the size comes from the file
    assert got['src']['prefix'] == 'model.backbone.' and got['src']['commit'] == COMMIT
    assert got['src']['path'].startswith(str(cache))                        # into the hub cache, not the working dir
    torch.testing.assert_close(torch.tensor(got['emb']), io['norm3_tokens'].mean(1), atol=1e-5, rtol=0)
    assert load_offline(cache, tmp_path, revision=COMMIT)['src']['commit'] == COMMIT


def test_loader_finds_a_nested_or_differently_prefixed_backbone(tmp_path, tiny_sd):
    nested = {'model': {f'backbone.{k}': v for k, v in tiny_sd.items()} | {'sem_seg_head.x': torch.zeros(2)}}
    cache = write_hub_cache(tmp_path/'hub', nested)
    assert load_offline(cache, tmp_path, local_files_only=True)['src']['prefix'] == 'model.backbone.'
    plain = focalnet_from_state_dict(dict(tiny_sd))                          # the backbone alone, no prefix
    assert plain.checkpoint_prefix == '' and plain.embed_dim == 16


def test_no_weights_says_how_to_get_them(tmp_path):
    (tmp_path/'empty').mkdir()
    got = load_offline(tmp_path/'empty', tmp_path)
    assert got['error'] == 'BiomedParseUnavailable'
    for hint in ('https://huggingface.co/microsoft/BiomedParse', 'huggingface-cli login', 'HF_TOKEN', 'licence'):
        assert hint in got['message'], got['message']


@pytest.mark.parametrize('status, cls', [(403, 'GatedRepoError'), (401, 'HfHubHTTPError')])
def test_gated_or_unauthorised_repository_says_how_to_get_access(monkeypatch, status, cls):
    import httpx2, huggingface_hub.errors as hf_errors
    import sail.focalnet as focalnet
    url = 'https://huggingface.co/microsoft/BiomedParse/resolve/main/biomedparse_v1.pt'
    response = httpx2.Response(status, request=httpx2.Request('HEAD', url))
    def refuse(*a, **k): raise getattr(hf_errors, cls)(f'{status} Client Error', response=response)
    monkeypatch.setattr(focalnet, 'hf_hub_download', refuse)
    with pytest.raises(BiomedParseUnavailable) as e: biomedparse_weights_path()
    msg = str(e.value)
    assert 'microsoft/BiomedParse' in msg and 'licence' in msg and 'HF_TOKEN' in msg and 'login' in msg
    assert ('gated' if status == 403 else '401') in msg


def test_wrong_shape_missing_and_unexpected_tensors_are_named(tiny_sd):
    ckpt = fake_checkpoint(tiny_sd)
    bad = ckpt | {'model.backbone.layers.1.blocks.0.modulation.f.weight': torch.zeros(70, 32)}
    with pytest.raises(BackboneMismatch) as e: focalnet_from_state_dict(bad, 'biomedparse_v1.pt')
    assert 'layers.1.blocks.0.modulation.f.weight: file (70, 32), expected (69, 32)' in str(e.value)
    assert str(e.value).startswith('biomedparse_v1.pt:')
    bad = {k: v for k, v in ckpt.items() if k != 'model.backbone.norm2.bias'}
    bad |= {'model.backbone.norm4.weight': torch.ones(3)}
    with pytest.raises(BackboneMismatch) as e: find_backbone(bad)
    assert '1 missing (norm2.bias)' in str(e.value) and '1 unexpected (norm4.weight)' in str(e.value)
    with pytest.raises(BackboneMismatch, match='no FocalNet backbone'): find_backbone({'model.head.w': torch.ones(1)})


def test_a_checkpoint_that_needs_more_than_weights_only_is_refused_unexecuted(tmp_path):
    marker = tmp_path/'code-ran'
    class Payload:   # unpickling this would create `marker`
        def __reduce__(self): return (Path.touch, (marker,))
    torch.save({'model': {'w': torch.ones(1)}, 'payload': Payload()}, tmp_path/'evil.pt')
    with pytest.raises(CheckpointRefused, match='weights_only=True'): read_weights(tmp_path/'evil.pt')
    assert not marker.exists()
    (tmp_path/'cut.pt').write_bytes((tmp_path/'evil.pt').read_bytes()[:100])
    with pytest.raises(BiomedParseUnavailable, match='truncated or corrupt'): read_weights(tmp_path/'cut.pt')

def test_random_biomedparse_embeds_demo_slices():
    "`random:biomedparse` (the full-size FocalNet, spec §3.3 weights) embeds a few demo slices in SAIL's own environment."
    import numpy as np
    from PIL import Image
    from sail.config import EncoderConfig
    from sail.encoders import build_encoder
    from sail.steps import lesson_run
    from sail.slices import load_slices
    run = lesson_run()
    few = load_slices(run.paths.data).head(3)
    enc = build_encoder(EncoderConfig('random:biomedparse', image_size=64))           # a small input for the CPU
    assert enc.dim == 1536 and enc.description['weights'].startswith('random')
    images = torch.stack([enc.prepare(np.asarray(Image.open(run.paths.data/p))) for p in few.image_path])
    with torch.no_grad(): direct = enc(images)
    with torch.no_grad(): tokens = enc.backbone(normalize_for_biomedparse(images)).tokens
    torch.testing.assert_close(direct, tokens.mean(1), atol=1e-5, rtol=0)      # the mean of the norm3 tokens
    assert torch.isfinite(direct).all() and direct.shape == (3, 1536)

def normalize_for_biomedparse(images):
    "BiomedParse's normalisation written out: grey to RGB, (x - mean) / std on the 0-255 scale."
    mean = torch.tensor((123.675, 116.28, 103.53)).view(1, 3, 1, 1); std = torch.tensor((58.395, 57.12, 57.375)).view(1, 3, 1, 1)
    return (images[:, None].float() - mean) / std
