"The fast training step (in-place kept entries, fused sparse backward) against the obvious dense computation (issue 30)."
import pytest, torch, torch.nn.functional as F
from sail.sae import MatryoshkaSAE, train_forward, project_decoder_grad, batch_topk, kept_entries

@pytest.mark.parametrize('positive', [True, False])
@pytest.mark.parametrize('shape,n', [((512, 2048), 40 * 512), ((300, 1000), 6000), ((64, 128), 20 * 64), ((50, 40), 1900)])
def test_kept_entries_are_the_batch_topk_set(shape, n, positive):
    "Identical codes on random data: the set of `batch_topk` (and of a full `torch.topk`), from a prefix view."
    g = torch.Generator().manual_seed(n)
    z = torch.randn(shape[0], shape[1] + 7, generator=g) + 0.3
    s = z[:, :shape[1]]                                              # not contiguous, as a level's prefix
    r, c, v = kept_entries(s, n, positive)
    flat = s.reshape(-1)
    ref = flat.clamp_min(0) if positive else flat
    tv, ti = torch.topk(ref, n)
    bv, bi = batch_topk(ref, n)
    if positive: ti, bi = ti[tv > 0], bi[bv > 0]
    got = r * shape[1] + c
    assert torch.equal(torch.sort(got).values, torch.sort(ti).values)
    assert torch.equal(torch.sort(got).values, torch.sort(bi).values)
    assert torch.equal(v, flat[got]) and bool((torch.diff(got) > 0).all())   # values, row-major order

def _dense_step(sae, x):
    "The obvious implementation: dense z with autograd, per-level top-k masks, dense decode; per-model, per-level MSE."
    M, D = sae.n_models, sae.sizes[-1]
    mse = []
    for m in range(M):
        W, b_enc, b_dec = sae.W[m], sae.b_enc[m], sae.b_dec[m]
        Wd = (W if sae.variant == 'paper' else W.detach()) if sae.tied else sae.W_dec[m]
        z = (x - b_dec) @ W.T + b_enc
        row = []
        for l, D_l in enumerate(sae.sizes):
            s = z[:, :D_l].clamp_min(0) if sae.variant == 'paper' else z[:, :D_l]
            idx = torch.topk(s.detach().reshape(-1), int(sae.ks[m, l]) * len(x)).indices
            mask = torch.zeros(s.numel()); mask[idx] = 1
            row.append((((s * mask.reshape(s.shape)) @ Wd[:D_l] + b_dec - x)**2).mean())
        mse.append(torch.stack(row))
    return torch.stack(mse)

@pytest.mark.parametrize('tied', [True, False])
@pytest.mark.parametrize('variant', ['paper', 'released'])
def test_fast_step_equals_dense_reference(variant, tied):
    "Loss, per-level MSE and every gradient (after the decoder projection) of a two-model family within 1e-5."
    torch.manual_seed(0)
    x = F.normalize(torch.randn(256, 48) + 0.2, dim=-1)
    make = lambda: MatryoshkaSAE(48, [16, 64, 192], [[4, 8, 16], [2, 6, 24]], variant=variant, tied=tied, seeds=[3, 4])
    fast, slow = make().train(), make().train()
    with torch.no_grad():
        for sae in (fast, slow): sae.b_enc += 0.02; sae.b_dec += 0.01 * torch.randn(48, generator=torch.Generator().manual_seed(1))
    out = train_forward(fast, x); out['loss'].backward(); project_decoder_grad(fast)
    mse = _dense_step(slow, x); mse.mean(1).sum().backward()
    if variant == 'paper':                                           # the projection, written out with F.normalize
        Wd = slow.W if tied else slow.W_dec
        u = F.normalize(Wd.detach(), dim=-1); Wd.grad -= (Wd.grad * u).sum(-1, keepdim=True) * u
    torch.testing.assert_close(out['mse'], mse.detach(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out['loss'], mse.mean(1).sum(), rtol=1e-5, atol=1e-8)
    for name in ['W', 'b_enc', 'b_dec'] + ([] if tied else ['W_dec']):
        a, b = getattr(fast, name).grad, getattr(slow, name).grad
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=name)
