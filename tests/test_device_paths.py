"""The code paths a GPU takes, run on the CPU through the same code: bf16 autocast in SAE training, codes and embedding,
the torch retrieval engine, and their parity with fp32 within stated tolerances (issue 14)."""
import numpy as np, pyarrow.parquet as pq, pytest, torch, torch.nn.functional as F
from pathlib import Path
from sail.config import SAEConfig, EncoderConfig
from sail.sae import MatryoshkaSAE, train_forward
from sail.train import train_family, evaluate
from sail.codes import compute_codes
from sail.retrieval import Bank, fingerprints, sweep_retrieve

from sail.core import BF16_PARITY
R2_TOL, LOSS_RTOL, SUPPORT_JACCARD, RETRIEVAL_OVERLAP, EMBED_COSINE = BF16_PARITY   # bf16 vs fp32 after the same steps

def _structured(n=3000, d=64, D=256, k=6, seed=0):
    "Sparse combinations of a hidden unit-norm dictionary plus noise, L2-normalised: something for an SAE to find."
    g = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(D, d, generator=g), dim=1)
    idx = torch.stack([torch.randperm(D, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) + 0.2
    X = (coef[..., None] * atoms[idx]).sum(1) + 0.05 * torch.randn(n, d, generator=g)
    return F.normalize(X, dim=1)

def test_autocast_training_step_used_to_crash_and_now_runs():
    "The CUDA crash (bf16 kept values into embedding_bag with an fp32 decoder), reproduced with CPU autocast."
    sae = MatryoshkaSAE(64, [16, 64], [[2, 4]], seeds=[1]); x = _structured(256)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = train_forward(sae, x)
        assert sae.preacts(x).dtype == torch.bfloat16            # the GEMM really ran in bf16
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and sae.W.grad is not None and torch.isfinite(sae.W.grad).all()

@pytest.fixture(scope='module')
def trained():
    "The same family trained in fp32 and under bf16 autocast, from the same seeds and batch order."
    X = _structured(); Xtr, Xva = X[:2400], X[2400:]
    out = {}
    for dtype in ('float32', 'bfloat16'):
        scfg = SAEConfig(epochs=6, batch_size=200, warmup_steps=5, lr=3e-3, dtype=dtype)
        losses = []
        sae = MatryoshkaSAE(64, [64, 256], [[4, 8], [8, 16]], variant='paper', seeds=[3, 4])
        sae = train_family(sae, Xtr, Xva, scfg, on_epoch=lambda e, tm, v, lr: losses.append(np.mean(tm)))
        out[dtype] = dict(sae=sae, loss=losses[-1], r2=[m['r2'][-1] for m in evaluate(sae, Xva)])
    return Xva, out

def test_bf16_training_on_cpu_matches_fp32(trained):
    _, out = trained
    fp, bf = out['float32'], out['bfloat16']
    assert min(fp['r2']) > 0.25, fp['r2']                                         # it learned something (0 = the mean)
    assert np.allclose(bf['r2'], fp['r2'], atol=R2_TOL), (bf['r2'], fp['r2'])
    assert abs(bf['loss'] - fp['loss']) <= LOSS_RTOL * fp['loss'], (bf['loss'], fp['loss'])
    assert not torch.equal(bf['sae'].W, fp['sae'].W)                              # bf16 really changed the arithmetic

def _csr(c, n, D): return c.matrix(D)

def test_bf16_codes_and_torch_retrieval_match_fp32(trained):
    Xva, out = trained
    sae = out['float32']['sae']
    one = MatryoshkaSAE(64, [64, 256], [[4, 8]], seeds=[3])
    with torch.no_grad():
        for name in ('W', 'b_enc', 'b_dec', 'theta', 'theta_sum', 'theta_count'): getattr(one, name)[0] = getattr(sae, name)[0]
    a = _csr(compute_codes(one, Xva, 128, 'cpu', dtype='float32'), len(Xva), 256)
    b = _csr(compute_codes(one, Xva, 128, 'cpu', dtype='bfloat16'), len(Xva), 256)
    sa, sb = a.astype(bool), b.astype(bool)
    jaccard = sa.multiply(sb).sum() / (sa + sb).astype(bool).sum()
    assert jaccard >= SUPPORT_JACCARD, jaccard
    both = sa.multiply(sb)
    assert np.allclose(np.asarray(a[both]).ravel(), np.asarray(b[both]).ravel(), atol=0.02)   # bf16: 8 mantissa bits
    scan = np.arange(len(Xva)) // 4
    lists = []
    for codes in (a, b):
        fi, fv, _ = fingerprints(codes[:50], 5)
        (_, _, rows, _), = sweep_retrieve(Bank(codes, chunk=256, engine='torch'), fi, fv, [5], scan, 5, scan[:50])
        lists.append(rows.numpy())
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(*lists)])
    assert overlap >= RETRIEVAL_OVERLAP, overlap

def test_bf16_embedding_on_cpu_matches_fp32(mini, make_config, tmp_path):
    "embed.dtype: bfloat16 runs the encoder under CPU autocast through the embedding step's own loop."
    from sail.slices import slice_dataset
    from sail.embed import embed_encoder, load_embeddings
    cfg = make_config(data={'totalseg_root': str(mini), 'dir': str(tmp_path/'data')}, workers=2,
                      embed={'shard_rows': 256, 'batch_size': 16})
    slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    tables = {}
    for dtype in ('float32', 'bfloat16'):
        cfg.embed.dtype = dtype
        ec = EncoderConfig('random:dinov3', arch='tiny', image_size=32, id=f'tiny-{dtype}')
        embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, ec)

        tables[dtype] = load_embeddings(cfg.data.dir, f"tiny-{dtype}").X.copy()
    a, b = tables['float32'], tables['bfloat16']
    assert a.shape == b.shape and not np.array_equal(a, b)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= EMBED_COSINE, cos.min()

@pytest.mark.parametrize('key,value', [('dtype', 'float16'), ('batch_order', 'shuffled')])
def test_precision_and_batch_order_are_checked_settings(make_config, key, value):
    from sail.config import ConfigError
    with pytest.raises(ConfigError, match=f"'sae.{key}' must be one of"):
        make_config(check_paths=False, sae={key: value})

@pytest.mark.parametrize('order,same', [('fixed', True), ('epoch', False)])
def test_batch_order_fixed_repeats_epochs_and_epoch_reshuffles(monkeypatch, order, same):
    "sae.batch_order: 'fixed' feeds every epoch the same batches (spec §5.9, the reference); 'epoch' a new order each."
    import sail.train as train
    seen = []
    real = train.train_forward
    monkeypatch.setattr(train, 'train_forward', lambda sae, xb: (seen.append(xb[:, 0].clone()), real(sae, xb))[1])
    X = _structured(120)
    sae = MatryoshkaSAE(64, [16, 64], [[2, 4]], seeds=[1])
    train_family(sae, X, X[:20], SAEConfig(epochs=2, batch_size=40, warmup_steps=1, batch_order=order))
    assert len(seen) == 6
    first, second = torch.cat(seen[:3]), torch.cat(seen[3:])
    assert torch.equal(torch.sort(first).values, torch.sort(second).values)        # each epoch sees every row once
    assert torch.equal(first, second) == same
