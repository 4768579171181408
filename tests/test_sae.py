"The SAE against dense reference computations; batched families; checkpoints; resume; SAELens export; codes."
import json, os, sys, time, signal, shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, torch.nn.functional as F
import scipy.sparse as sp
from sail.config import SAEConfig, load_config
from sail.sae import MatryoshkaSAE, train_forward, encode, dense_train_codes, grid, config_name
from sail.train import train_family, save_sae, load_sae, export_saelens, evaluate

def _dense_loss(sae, x):
    "The obvious dense implementation of the training loss (model 0): dense top-k masks, dense decode of padded codes."
    W, b_enc, b_dec = sae.W[0], sae.b_enc[0], sae.b_dec[0]
    z = (x - b_dec) @ W.T + b_enc
    Wd = W if sae.variant == 'paper' else W.detach()
    losses = []
    for l, D_l in enumerate(sae.sizes):
        s = z[:, :D_l].clamp_min(0) if sae.variant == 'paper' else z[:, :D_l]
        idx = torch.topk(s.detach().reshape(-1), int(sae.ks[0, l]) * len(x)).indices
        mask = torch.zeros(s.numel()); mask[idx] = 1
        a = s * mask.reshape(s.shape)
        losses.append(F.mse_loss(a @ Wd[:D_l] + b_dec, x))
    return torch.stack(losses).mean()

@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_sparse_training_step_equals_dense_reference(variant):
    torch.manual_seed(0)
    x = F.normalize(torch.randn(64, 20), dim=-1)
    a = MatryoshkaSAE(20, [8, 16, 48], [3, 6, 12], variant=variant, seeds=[11])
    b = MatryoshkaSAE(20, [8, 16, 48], [3, 6, 12], variant=variant, seeds=[11])
    noise = 0.01 * torch.randn(20)
    with torch.no_grad():
        for m in (a, b): m.b_enc += 0.3; m.b_dec += noise
    la = train_forward(a.train(), x)['loss']; la.backward()
    lb = _dense_loss(b, x); lb.backward()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-7)
    for n in ['W', 'b_enc', 'b_dec']:
        torch.testing.assert_close(getattr(a, n).grad, getattr(b, n).grad, rtol=1e-4, atol=1e-7, msg=n)

def test_released_decoder_gets_no_gradient_through_decode():
    "Detached tied decoder: W's gradient comes only from the encoder path (rows never selected get none)."
    torch.manual_seed(1)
    x = F.normalize(torch.randn(16, 12), dim=-1)
    sae = MatryoshkaSAE(12, [32], [1], variant='released', seeds=[0])
    train_forward(sae.train(), x)['loss'].backward()
    z = sae.preacts(x)[0]
    kept = torch.zeros(32, dtype=torch.bool); kept[torch.topk(z.reshape(-1), 16).indices % 32] = True
    assert (sae.W.grad[0][~kept] == 0).all() and (sae.W.grad[0][kept] != 0).any()

def test_one_level_is_batchtopk_and_batch_one_is_topk():
    torch.manual_seed(2)
    x = F.normalize(torch.randn(40, 10), dim=-1)
    sae = MatryoshkaSAE(10, [30], [4], seeds=[3])
    with torch.no_grad(): sae.b_enc += 0.5
    z = sae.preacts(x)[0].clamp_min(0)
    plain = torch.zeros(z.numel()); top = torch.topk(z.reshape(-1), 160); plain[top.indices] = top.values
    torch.testing.assert_close(dense_train_codes(sae, x)[0], plain.reshape(z.shape))
    one = dense_train_codes(sae, x[:1])[0][0]
    assert set(one.nonzero().flatten().tolist()) == set(torch.topk(z[0], 4).indices.tolist())

def _data(n=600, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(12, d, generator=g)
    X = centers[torch.randint(0, 12, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    return F.normalize(X, dim=-1)

def test_family_equals_members_trained_alone():
    X = _data(); scfg = SAEConfig(epochs=4, batch_size=100, warmup_steps=3, lr=1e-3)
    ks = [[2, 4], [4, 8], [2, 8]]
    fam = train_family(MatryoshkaSAE(24, [16, 64], ks, seeds=[5, 6, 7]), X, X[:200], scfg)
    for m, k in enumerate(ks):
        alone = train_family(MatryoshkaSAE(24, [16, 64], [k], seeds=[5 + m]), X, X[:200], scfg)
        torch.testing.assert_close(fam.W[m].detach(), alone.W[0].detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fam.theta[m], alone.theta[0], rtol=1e-4, atol=1e-6)

def test_training_improves_and_paper_beats_released_here():
    X = _data(2000); scfg = SAEConfig(epochs=8, batch_size=200, warmup_steps=5, lr=3e-3)
    r2 = {}
    for v in ['paper', 'released']:
        sae = MatryoshkaSAE(24, [16, 64], [[4, 8]], variant=v, seeds=[1])
        sae = train_family(sae, X, X[:500], scfg)
        r2[v] = evaluate(sae, X[:500])[0]['r2'][-1]
    assert r2['paper'] > 0.5 and r2['paper'] > r2['released'], r2

def test_checkpoint_roundtrip_and_wrong_dim(tmp_path):
    X = _data(); sae = train_family(MatryoshkaSAE(24, [16, 64], [[2, 4], [4, 8]], seeds=[1, 2]), X, X[:100], SAEConfig(epochs=1, batch_size=100))
    save_sae(sae, 1, tmp_path/'m', dict(encoder='toy'))
    back = load_sae(tmp_path/'m', 24)
    assert torch.equal(back.W[0], sae.W[1].detach()) and back.theta.item() == sae.theta[1].item()
    torch.testing.assert_close(encode(back, X)[0].dense(64), encode(sae, X)[1].dense(64))
    with pytest.raises(ValueError, match=r"takes 24-d embeddings \(trained on toy\), got 1536-d"):
        load_sae(tmp_path/'m', 1536)
    assert not any(p.suffix in ('.pt', '.pkl', '.ckpt') for p in (tmp_path/'m').iterdir())

@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_saelens_export_loads_and_matches(tmp_path, variant):
    sae_lens = pytest.importorskip('sae_lens')
    X = _data(); sae = train_family(MatryoshkaSAE(24, [16, 64], [[2, 4]], variant=variant, seeds=[1]), X, X[:100], SAEConfig(epochs=2, batch_size=100))
    save_sae(sae, 0, tmp_path/'m', dict(encoder='toy'))
    out = export_saelens(tmp_path/'m', tmp_path/'lens')
    loaded = sae_lens.SAE.load_from_disk(str(out), device='cpu')
    ours = encode(load_sae(tmp_path/'m'), X)[0].dense(64)     # the saved model: θ on loading, as the original (spec §5.5)
    theirs = loaded.encode(X)
    torch.testing.assert_close(theirs.float(), ours, rtol=1e-5, atol=1e-6)

def test_grid_is_28_per_encoder():
    assert sum(len(v) for v in grid().values()) == 28
    assert config_name([128, 512, 2048, 8192], [5, 10, 20, 40]) == 'D_128_512_2048_8192_K_5_10_20_40'

def test_auxk_gives_dead_features_a_gradient():
    torch.manual_seed(4)
    x = F.normalize(torch.randn(64, 16), dim=-1)
    sae = MatryoshkaSAE(16, [64], [2], aux_k_coef=1/32, aux_dead_samples=64, seeds=[0])
    out = train_forward(sae.train(), x)                                      # first step: nothing is dead yet
    assert out['aux'].item() == 0
    sae.zero_grad()
    dead_before = (sae.since_fired[0] >= 64).clone()
    out = train_forward(sae, x)                                              # features silent for 64 samples are dead now
    assert dead_before.any() and out['aux'].item() > 0
    out['loss'].backward()
    g = sae.W.grad[0].norm(dim=1)
    no_aux = MatryoshkaSAE(16, [64], [2], seeds=[0]); no_aux.load_state_dict(sae.state_dict())
    no_aux.aux_k_coef = 0; train_forward(no_aux.train(), x)['loss'].backward()
    extra = (g - no_aux.W.grad[0].norm(dim=1)).abs()
    assert extra[dead_before].max() > 0                                      # dead rows receive the AuxK gradient
