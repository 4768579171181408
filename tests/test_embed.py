"Encoders and embedding extraction: preprocessing arithmetic, DINOv3 feature, random init, resume, shards, failures, tokens."
import json, os, sys, time, signal, shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pyarrow.parquet as pq, pytest, torch
from conftest import kill_at
from PIL import Image
from sail.core import project_root
from sail.config import EncoderConfig, load_config
from sail.encoders import (build_encoder, square_resize, normalize, IMAGENET_MEAN, IMAGENET_STD, reinit_, dinov3_config,
                           PixelsEncoder, EncoderUnavailable, encoder_id)
from sail.slices import slice_dataset
from sail.embed import embed_encoder, load_embeddings, merge_embeddings

ROOT = project_root()

@pytest.fixture
def sliced(mini, make_config, tmp_path):
    "The real fixture sliced (227 slices), with a config embedding in shards of 64."
    def _make(**embed):
        cfg = make_config(data={'totalseg_root': str(mini), 'dir': str(tmp_path/'data')}, workers=2,
                          embed={'shard_rows': 64, 'batch_size': 16} | embed)
        slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
        return cfg
    return _make

def test_registry():
    assert isinstance(build_encoder('pixels'), PixelsEncoder)
    with pytest.raises(KeyError, match="unknown encoder 'dinov2'; known:"):
        build_encoder('dinov2')
    with pytest.raises(EncoderUnavailable, match='huggingface.co/microsoft/BiomedParse'):   # no weights here: how to get them
        build_encoder(EncoderConfig('biomedparse'), local_files_only=True)
    assert encoder_id(EncoderConfig('random:biomedparse')) == 'random-biomedparse'

def test_preprocessing_arithmetic_matches_independent_computation():
    g = np.random.default_rng(0)
    img = g.integers(0, 256, (224, 224), dtype=np.uint8)
    x = normalize(square_resize(img, 224)[None], IMAGENET_MEAN, IMAGENET_STD)[0].numpy()
    for c in range(3):   # HF DINOv3 processor: rescale 1/255 then (x - mean) / std per channel
        np.testing.assert_allclose(x[c], (img / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rtol=0, atol=1e-5)
    big = np.asarray(Image.fromarray(g.integers(0, 256, (64, 64), dtype=np.uint8)).resize((448, 448), Image.NEAREST))
    ours = square_resize(big, 224).numpy().astype(int)
    pil = np.asarray(Image.fromarray(big).resize((224, 224), Image.BILINEAR)).astype(int)   # PIL: antialiased bilinear
    assert np.abs(ours - pil).max() <= 1

def test_letterbox_keeps_aspect():
    tall = np.full((200, 50), 255, np.uint8)
    sq = square_resize(tall, 100).numpy()
    assert sq[:, 50].min() == 255 and sq[:, :30].max() == 0 and sq[:, -30:].max() == 0

def test_tiny_dinov3_feature_is_cls_after_final_norm():
    enc = build_encoder(EncoderConfig('random:dinov3', arch='tiny', image_size=64))
    batch = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        out = enc.model(pixel_values=normalize(batch, IMAGENET_MEAN, IMAGENET_STD), output_hidden_states=True)
        feat = enc(batch)
        renormed = enc.model.norm(out.hidden_states[-1])[:, 0]
    torch.testing.assert_close(feat, out.last_hidden_state[:, 0])
    torch.testing.assert_close(feat, renormed)
    assert feat.shape == (3, 192) and enc.description['weights'].startswith('random')

def test_random_init_statistics_vitl16_shape():
    from transformers import AutoModel
    cfg = dinov3_config('vitl16'); cfg.num_hidden_layers = 2                # ViT-L widths, 2 layers (memory)
    m = reinit_(AutoModel.from_config(cfg), seed=42)
    w = torch.cat([l.weight.flatten() for l in m.modules() if isinstance(l, torch.nn.Linear)])
    assert abs(w.std().item() - 0.02) < 2e-4 and abs(w.mean().item()) < 1e-4
    assert all((l.bias == 0).all() for l in m.modules() if isinstance(l, torch.nn.Linear) and l.bias is not None)
    assert all((l.weight == 1).all() and (l.bias == 0).all() for l in m.modules() if isinstance(l, torch.nn.LayerNorm))
    assert m.config.hidden_size == 1024

def test_embed_load_zero_copy_and_aligned(sliced):
    cfg = sliced(encoders=[{'name': 'pixels', 'image_size': 16}])
    meta = embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, cfg.embed.encoders[0])
    emb, slices = load_embeddings(cfg.data.dir, 'pixels', ['plane'])
    assert emb.shape == (227, 256) and emb.dtype == np.float32 and not emb.flags['OWNDATA']
    assert meta.n_rows == 227 and meta.failures == [] and meta.dim == 256 and meta.merged
    t = pq.read_table(Path(cfg.data.dir)/'embeddings'/'pixels.parquet')
    assert str(t.schema.field('embedding').type) == 'fixed_size_list<element: float>[256]'
    assert list(slices.columns) == ['slice_id', 'plane']
    p = Path(cfg.data.dir)/'slices.parquet'                                  # a changed slice table is a mismatch
    df = pd.read_parquet(p); df.iloc[::-1].to_parquet(p, index=False)
    with pytest.raises(ValueError, match='do not match the 227 slices'):
        load_embeddings(cfg.data.dir, 'pixels')

def test_corrupt_png_recorded_and_nan_raises(sliced):
    cfg = sliced(encoders=[{'name': 'pixels', 'image_size': 8}])
    d = Path(cfg.data.dir); sl = pd.read_parquet(d/'slices.parquet')
    (d/sl.image_path[10]).write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    meta = embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, cfg.embed.encoders[0])
    assert [f['slice_id'] for f in meta.failures] == [sl.slice_id[10]] and sl.image_path[10] in meta.failures[0]['image_path']
    emb, rows = load_embeddings(d, 'pixels')
    assert len(rows) == 226 and sl.slice_id[10] not in set(rows.slice_id)

    class NaNOnBright(PixelsEncoder):
        def forward(self, b):
            e = super().forward(b); e[b.float().mean((1, 2)) > 250] = float('nan'); return e
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(d/sl.image_path[20])
    with pytest.raises(FloatingPointError, match=f"non-finite embedding for slice {sl.slice_id[20]}"):
        embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, EncoderConfig('pixels', id='nan', image_size=8), encoder=NaNOnBright(8))

def test_sharded_run_plus_merge_equals_single_run(sliced):
    cfg = sliced(encoders=[{'name': 'random:dinov3', 'arch': 'tiny', 'image_size': 32, 'id': 'tiny'}])
    single = cfg.embed.encoders[0]
    embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, single)
    a = pq.read_table(Path(cfg.data.dir)/'embeddings'/'tiny.parquet')
    sharded = EncoderConfig('random:dinov3', arch='tiny', image_size=32, id='tiny-sharded')
    r0 = embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, sharded, shard='0/2')
    assert (r0.encoder, r0.merged, r0.shards_missing, r0.shards_total) == ('tiny-sharded', False, 2, 4)
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) \[1, 3\] not done yet"):
        merge_embeddings(cfg.paths.data, cfg.embed, sharded)
    r1 = embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, sharded, shard='1/2')                           # the last shard merges
    b = pq.read_table(Path(cfg.data.dir)/'embeddings'/'tiny-sharded.parquet')
    assert r1.merged and r1.n_rows == 227 and a.equals(b)

def _yaml(tmp_path, mini, name, data, extra=''):
    p = tmp_path/f'{name}.yaml'
    p.write_text(f"name: {name}\nworkers: 1\ndata: {{totalseg_root: {mini}, dir: {data}}}\n{extra}")
    return p

def test_killed_embedding_resumes_identically(mini, tmp_path):
    enc = "embed: {shard_rows: 32, batch_size: 8, encoders: [{name: random:dinov3, arch: tiny, image_size: 48, id: t}]}\n"
    ref = load_config(_yaml(tmp_path, mini, '_pytest_emb_ref', tmp_path/'ref', enc))
    slice_dataset(ref.paths, ref.data, ref.slices, ref.compute); embed_encoder(ref.paths.data, ref.embed, ref.compute, ref.embed.encoders[0])
    path = _yaml(tmp_path, mini, '_pytest_emb_kill', tmp_path/'kill', enc)
    c = load_config(path); slice_dataset(c.paths, c.data, c.slices, c.compute)
    code = f"from sail.config import load_config; from sail.embed import embed_encoder; c = load_config({str(path)!r}); embed_encoder(c.paths.data, c.embed, c.compute, c.embed.encoders[0])"
    kill_at(code, 'embed:shard', 3)                                          # killed right after the third shard
    shards = tmp_path/'kill'/'embeddings'/'.t-shards'
    assert len(list(shards.glob('0*.parquet'))) == 3 and not (tmp_path/'kill'/'embeddings'/'t.parquet').exists()
    c = load_config(path); embed_encoder(c.paths.data, c.embed, c.compute, c.embed.encoders[0])
    a = pq.read_table(tmp_path/'ref'/'embeddings'/'t.parquet'); b = pq.read_table(tmp_path/'kill'/'embeddings'/'t.parquet')
    assert a.equals(b)

def test_cli_shards_and_token_never_written(mini, tmp_path):
    fake = 'hf_SAILfakeTOKENvalue0123456789abcdef'
    extra = ("embed: {shard_rows: 64, encoders: [{name: pixels, image_size: 8}, "
             "{name: dinov3, model: sail-tests/gated-model, optional: true}]}\n")
    cfgp = _yaml(tmp_path, mini, f'_pytest_token_{tmp_path.name}', tmp_path/'data', extra)
    env = os.environ | {'HF_TOKEN': fake, 'HUGGING_FACE_HUB_TOKEN': fake}
    sail = [sys.executable, '-c', 'import sys; from sail.cli import main; sys.exit(main())']
    try:
        r = subprocess.run(sail + ['run', str(cfgp), '--steps', 'slices', 'embed'], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr
        m = json.loads((ROOT/'runs'/f'_pytest_token_{tmp_path.name}'/'manifest.json').read_text())
        assert 'dinov3' in m['steps']['06_embed']['summary']['skipped']                 # optional and unavailable
        r2 = subprocess.run(sail + ['embed', str(cfgp), '--encoder', 'pixels', '--shard', '0/3', '--force'], capture_output=True, text=True, env=env, cwd=ROOT)
        assert r2.returncode == 0 and 'pixels: 2 of 4 shards still to do' in r2.stdout, r2.stdout + r2.stderr
        for spec in ['1/3', '2/3']: subprocess.run(sail + ['embed', str(cfgp), '--encoder', 'pixels', '--shard', spec], check=True, capture_output=True, env=env, cwd=ROOT)
        emb, rows = load_embeddings(tmp_path/'data', 'pixels')
        assert emb.shape == (227, 64)
        texts = r.stdout + r.stderr + r2.stdout + r2.stderr
        for folder in [tmp_path/'data', ROOT/'runs'/f'_pytest_token_{tmp_path.name}']:
            for f in folder.rglob('*'):
                if f.is_file(): assert fake.encode() not in f.read_bytes(), f
        assert fake not in texts
    finally: shutil.rmtree(ROOT/'runs'/f'_pytest_token_{tmp_path.name}', ignore_errors=True)

def astra_input(d:Path, row, size:int)->torch.Tensor:
    "Independent arithmetic for one stored slice: PNG -> HU by its window (CT) or v/255 (MRI) -> Astra's 0..1 -> air bars -> (size, size)."
    v = np.asarray(Image.open(d/row.image_path), np.float64)
    if row.modality == 'ct':
        lo = row.window_centre - row.window_width / 2
        x = np.clip((lo + v / 255 * row.window_width + 1000) / 1200, 0, 1)
    else: x = v / 255
    h, w = x.shape; side = max(h, w); sq = np.zeros((side, side)); sq[(side - h)//2:(side - h)//2 + h, (side - w)//2:(side - w)//2 + w] = x
    return torch.nn.functional.interpolate(torch.tensor(sq, dtype=torch.float32)[None, None], size=(size, size), mode='bilinear', antialias=True)[0, 0]

def test_hu_encoder_gets_each_ct_slice_window_through_the_loader(sliced):
    "astra-ct's twin: every CT row is embedded from HU recomputed with its own window, every MRI row from v/255."
    cfg = sliced(encoders=[{'name': 'random:astra-ct', 'image_size': 32}])
    enc = build_encoder(cfg.embed.encoders[0])
    assert enc.uses_window and enc.dim == 2048
    embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, cfg.embed.encoders[0], encoder=enc)
    d = Path(cfg.data.dir)
    emb, rows = load_embeddings(d, 'random-astra-ct', ['modality', 'window_centre', 'window_width', 'image_path'])
    assert set(rows.modality) == {'ct', 'mri'} and rows[rows.modality == 'ct'].window_width.notna().all()
    pick = [rows.index[rows.modality == 'ct'][3], rows.index[rows.modality == 'mri'][3]]
    expected = [astra_input(d, rows.loc[i], 32) for i in pick]
    with torch.inference_mode(): want = enc(torch.stack(expected)).numpy()
    assert np.abs(emb[pick] - want).max() < 1e-5 * np.abs(want).max()        # float32 through 152 layers, other batch sizes
    ct_as_mri = enc(torch.stack([torch.as_tensor(enc.prepare(np.asarray(Image.open(d/rows.image_path[pick[0]]))))]))
    assert np.abs(ct_as_mri.numpy()[0] - emb[pick[0]]).max() > 1e-2 * np.abs(want).max()  # the window changed what it saw

def test_slab_encoder_embeds_each_slice_with_its_neighbours(sliced):
    """2.5-D (`slab: 1`): the embedding step feeds the 3-D network each slice with the slices before and after it in its
    scan's plane (the edge slice repeated at a plane's ends), computed here from the PNGs by independent arithmetic."""
    from sail.backbones import load_astra, slab_features
    from sail.embed import _shard_dir, _shard_file
    ec = {'name': 'random:astra-ct', 'image_size': 32, 'slab': 1}
    cfg = sliced(encoders=[ec])
    enc = build_encoder(cfg.embed.encoders[0])
    assert enc.slab == 1 and enc.description['slab'] == 1 and 'slabs of 3 slices' in enc.description['model']
    d = Path(cfg.data.dir)
    rows = pd.read_parquet(d/'slices.parquet', columns=['slice_id', 'modality', 'image_id', 'plane', 'slice_index', 'image_path',
                                                        'window_centre', 'window_width'])
    first = rows.groupby(['modality', 'image_id', 'plane']).slice_index.transform('min')
    edge, middle = rows.index[rows.slice_index == first][0], rows.index[(rows.slice_index > first + 1)][0]
    for i in (middle - 1, middle + 1):      # neighbours unlike the middle slice (adjacent real slices differ too little for the random twin)
        f = d/rows.image_path[i]; Image.fromarray(255 - np.asarray(Image.open(f))).save(f)
    embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, cfg.embed.encoders[0], encoder=enc, max_shards=1)         # the step's own path, first shard (64 rows)
    got = pq.read_table(_shard_file(_shard_dir(cfg.paths.data, cfg.embed.encoders[0]), 0)).to_pandas()
    assert middle < len(got) and rows.slice_index[middle - 1] + 1 == rows.slice_index[middle] == rows.slice_index[middle + 1] - 1
    def slab_of(i):                                       # the slice and its neighbours by slice_index, edge repeated
        r = rows.loc[i]; same = rows[(rows.modality == r.modality) & (rows.image_id == r.image_id) & (rows.plane == r.plane)].set_index('slice_index')
        ks = [min(max(r.slice_index + j, same.index.min()), same.index.max()) for j in (-1, 0, 1)]
        return torch.stack([astra_input(d, same.loc[k], 32) for k in ks])
    net3d = load_astra(False, 42)
    with torch.inference_mode(): want = slab_features(net3d, torch.stack([slab_of(edge), slab_of(middle)])[:, None]).numpy()
    emb = np.stack(got.set_index('slice_id').embedding.loc[rows.slice_id[[edge, middle]]].to_numpy())
    assert np.abs(emb - want).max() < 1e-5 * np.abs(want).max()
    from sail.embed import embed_images, slice_windows                          # a query's stack: each slice's slab from it
    three = rows.loc[middle - 1:middle + 1]
    mine = embed_images(enc, [np.asarray(Image.open(d/q)) for q in three.image_path], slice_windows(three))
    assert np.abs(mine[1] - emb[1]).max() < 1e-5 * np.abs(emb[1]).max()
    flat = build_encoder(EncoderConfig('random:astra-ct', image_size=32))       # the 2-D collapse on the slice alone differs:
    with torch.inference_mode(): alone = flat(astra_input(d, rows.loc[middle], 32)[None]).numpy()[0]
    assert np.abs(alone - emb[1]).max() > 0.1 * np.abs(alone).max()             # the neighbours are seen
    with pytest.raises(ValueError, match="'pixels' embeds single slices"): build_encoder(EncoderConfig('pixels', slab=1))

def test_learned_encoders_registered_with_provenance():
    for name, dim in [('efficientnet-lite0', 1280), ('random:efficientnet-lite0', 1280)]:
        enc = build_encoder(EncoderConfig(name, image_size=32))
        assert enc.dim == dim and enc.image_size == 32 and not enc.uses_window
    real, twin = build_encoder('efficientnet-lite0'), build_encoder('random:efficientnet-lite0')
    assert real.image_size == 224 and 'ImageNet' in real.description['weights'] and 'random' in twin.description['weights']
    x = torch.stack([real.prepare(np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8))] * 2)
    assert not torch.allclose(real(x), twin(x))
