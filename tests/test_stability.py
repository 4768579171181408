"Seed stability (issue 30): planted answers for the matching and its scores, same-seed trainings, saturation flags."
import itertools, json, os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from sail.config import SAEConfig, RankingConfig, StabilityConfig, ConfigError
from sail.core import RunPaths
from sail.train import sae_ref, train_seed, seed_folder, seed_value, load_sae
from sail.stability import match_dictionaries, stability_scores, recon_share
from sail.ranking import saturation_flags, with_stability, check_use_stability, rank_configs

ROOT = Path(__file__).resolve().parents[1]

def _data(n=300, d=16, seed=1):
    X = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return X[:240], X[240:], dict(encoder='toy', dim=d, n_train=240, n_val=n - 240)

def test_same_seed_trained_twice_is_identical_and_exactly_stable(tmp_path):
    scfg = SAEConfig(variants=['paper'], families=[[8, 32]], k_patterns=[[2, 4]], epochs=2, batch_size=32, lr=1e-3,
                     seeds=3)
    data, decoders = _data(), []
    for run in ('a', 'b'):
        paths = RunPaths(tmp_path, tmp_path/run, tmp_path/'data', tmp_path/'raw')
        ref = sae_ref(paths, 'toy', 'paper', 'D_8_32_K_2_4')
        train_seed(paths, scfg, ref, 1, data)
        decoders.append(load_sae(seed_folder(ref, 1)).decoder()[0].detach().numpy())
        assert json.loads((seed_folder(ref, 1)/'config.json').read_text())['seed'] == seed_value(42, 1)
    wa = load_file(str(tmp_path/'a'/'sae/toy/paper/D_8_32_K_2_4/seeds/1/model.safetensors'))
    wb = load_file(str(tmp_path/'b'/'sae/toy/paper/D_8_32_K_2_4/seeds/1/model.safetensors'))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    s = stability_scores(decoders, [8, 32], 0.7)
    assert s.levels.pw_mcc.tolist() == [1.0, 1.0] and s.levels.shared_fraction.tolist() == [1.0, 1.0]
    assert (s.features.reappearance == 1.0).all() and (s.features.match_1 == np.arange(32)).all()
    # another seed index: another initialisation and data order, so another dictionary
    paths = RunPaths(tmp_path, tmp_path/'a', tmp_path/'data', tmp_path/'raw')
    ref = sae_ref(paths, 'toy', 'paper', 'D_8_32_K_2_4')
    train_seed(paths, scfg, ref, 2, data)
    other = load_sae(seed_folder(ref, 2)).decoder()[0].detach().numpy()
    assert stability_scores([decoders[0], other], [8, 32]).levels.pw_mcc.iloc[-1] < 1.0

def test_seed_zero_cannot_be_trained_as_a_seed(tmp_path):
    paths = RunPaths(tmp_path, tmp_path/'run', tmp_path/'data', tmp_path/'raw')
    with pytest.raises(ValueError, match="seed 0 is the grid's own SAE"):
        train_seed(paths, SAEConfig(), sae_ref(paths, 'toy', 'paper', 'D_8_32_K_2_4'), 0, _data())

def test_hungarian_matching_is_the_brute_force_optimum():
    g = np.random.default_rng(3)
    for _ in range(5):
        A, B = g.normal(size=(5, 4)), g.normal(size=(5, 4))
        cos = (A / np.linalg.norm(A, axis=1)[:, None]) @ (B / np.linalg.norm(B, axis=1)[:, None]).T
        best = max(itertools.permutations(range(5)), key=lambda p: sum(cos[i, j] for i, j in enumerate(p)))
        m = match_dictionaries(A, B)
        assert tuple(m.cols) == best
        np.testing.assert_allclose(m.cosine, [cos[i, j] for i, j in enumerate(best)], atol=1e-12)

def test_planted_rotation_gives_the_hand_computed_scores():
    D, d, angle = 8, 10, np.pi / 3                     # one feature of seed 1 turned by 60 degrees: cosine 0.5
    E = np.eye(d)[:D]
    B = E.copy(); B[3] = np.cos(angle) * E[3] + np.sin(angle) * np.eye(d)[9]
    perm = np.array([1, 0, 3, 2, 7, 6, 5, 4])            # permuted within each level
    s = stability_scores([E, B[perm]], [4, 8], 0.7)
    assert s.levels.pw_mcc.tolist() == pytest.approx([(3 + 0.5) / 4, (7 + 0.5) / 8], abs=1e-12)
    assert s.levels.shared_fraction.tolist() == [3 / 4, 7 / 8]
    assert s.features.reappearance.tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    assert s.features.match_1.tolist() == list(np.argsort(perm))
    assert s.features.cosine_1[3] == pytest.approx(0.5, abs=1e-12)

def test_reconstruction_share_against_numpy():
    from sail.sae import MatryoshkaSAE
    sae = MatryoshkaSAE(8, [4, 16], [[2, 4]], seeds=[0]); sae.theta[:] = 0.0
    X = F.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    stable = np.arange(16) % 2 == 0
    got = recon_share(sae, X, stable, -1, batch_size=10)
    W, b, x = (sae.decoder()[0].detach().double().numpy(), sae.b_dec[0].detach().double().numpy(),
               X.double().numpy())
    z = (x - b) @ W.T + sae.b_enc[0].detach().double().numpy()
    a = z * (z > 0)
    sst = ((x - x.mean(0))**2).sum()
    assert got.r2_all == pytest.approx(1 - ((a @ W + b - x)**2).sum() / sst, abs=1e-5)
    assert got.r2_stable == pytest.approx(1 - (((a * stable) @ W + b - x)**2).sum() / sst, abs=1e-5)
    assert got.r2_none == pytest.approx(1 - ((b - x)**2).sum() / sst, abs=1e-5)        # the bias alone

def test_a_planted_tie_is_flagged_saturated():
    M = 0.7457022009241461                              # the demo's tie: EfficientNet-Lite0 and its random twin
    t = pd.DataFrame(dict(encoder=['efficientnet-lite0'] * 2 + ['random-efficientnet-lite0'] * 2, variant='paper',
                          config=['x', 'y'] * 2, M_top10_mean=[M, 0.5, M, 0.4], mean_n_features=[3.0, 4.0, 5.0, 6.0]))
    f = saturation_flags(t)
    assert f.tolist() == ['M_top10_mean: equals random-efficientnet-lite0', '',
                          'M_top10_mean: equals efficientnet-lite0', '']
    t2 = t.assign(M_top10_mean=[M, M + 1e-12, 0.1, 0.2])   # equal at 10 decimals: a tie at the best
    assert saturation_flags(t2).tolist()[:2] == ['M_top10_mean: 2 configurations tie at the best'] * 2
    assert saturation_flags(t.assign(M_top10_mean=[M, M + 1e-6, 0.1, 0.2])).tolist() == [''] * 4
    demo = pd.DataFrame(dict(encoder=['astra-ct', 'astra-ct', 'efficientnet-lite0'], variant='paper',   # the demo's:
                             config=['a', 'b', 'c'], M_top10_mean=[0.72, M, M]))            # one value, two encoders
    assert saturation_flags(demo).tolist() == ['', 'M_top10_mean: same value as efficientnet-lite0/c',
                                               'M_top10_mean: same value as astra-ct/b']

def test_stability_columns_and_the_stability_rank():
    ranked = rank_configs(pd.DataFrame(dict(encoder='e', variant='paper', config=['a', 'b'], M_top50_mean=[0.5, 0.4],
                                            mean_n_features=[2.0, 1.0])))
    st = pd.DataFrame(dict(encoder='e', variant='paper', config=['a'], pw_mcc=[0.8], shared_fraction=[0.6]))
    t = with_stability(ranked, st).set_index('config')
    assert t.pw_mcc['a'] == 0.8 and np.isnan(t.pw_mcc['b']) and 'rank_stability' not in t
    st2 = pd.DataFrame(dict(encoder='e', variant='paper', config=['a', 'b'], pw_mcc=[0.8, 0.3], shared_fraction=0.5))
    u = with_stability(ranked, st2, use=True).set_index('config')
    assert u.final_rank.to_dict() == {'a': 1.0, 'b': 2.0}      # mono a, perf b, stability a
    with pytest.raises(ConfigError, match='stability.configs: all'):
        check_use_stability(RankingConfig(use_stability=True), StabilityConfig(configs='selected'))

def test_benchmark_at_toy_size_writes_its_result_and_baseline(tmp_path):
    r = subprocess.run([sys.executable, 'benchmarks/stability_benchmark.py', '--features', '300', '--dim', '32'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, SAIL_BENCH_RESULTS=str(tmp_path)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads((tmp_path/'stability_benchmark.json').read_text())
    assert got['cosine_s'] > 0 and got['match_s'] > 0 and got['recovered'] == 1.0
