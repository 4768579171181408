"""Released and exported SAEs: the original's checkpoint reproduced, the hub path offline, save/load agreement, the
export round trip."""
import hashlib
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SHARED, shared_fixture
from sail.checkpoints import (CheckpointError, import_sae, read_source, read_released, read_saved, stage_hub_cache,
                              inference_mode)
from sail.sae import MatryoshkaSAE, encode, reconstruct, train_forward

def _sha256(path)->str: return hashlib.sha256(Path(path).read_bytes()).hexdigest()   # independent of SAIL's hashing

RELEASE = SHARED/'data'/'released-sae-mini'
CONFIG = 'D_16_32_64_128_K_2_4_8_16'

@pytest.fixture(scope='module')
def release() -> Path:
    "The original code's released-format checkpoint."
    return shared_fixture(RELEASE, f'{CONFIG}/checkpoints/last.ckpt')

def expected(release:Path):
    return [np.load(release/n) for n in ('inputs.npy', 'expected_codes.npy', 'expected_reconstruction.npy')]

def check_codes(sae, release:Path):
    "SAIL's inference codes and reconstruction of the fixture inputs against the original's own (1e-6)."
    x, codes, rec = expected(release)
    X = torch.from_numpy(x)
    np.testing.assert_allclose(encode(sae, X)[0].dense(128).numpy(), codes, atol=1e-6, rtol=0)
    np.testing.assert_allclose(reconstruct(sae, X)[0, -1].numpy(), rec, atol=1e-6, rtol=0)

def test_release_folder_reproduces_the_original(release):
    sae = import_sae(release/CONFIG)
    check_codes(sae, release)
    ck = torch.load(release/CONFIG/'checkpoints'/'last.ckpt', weights_only=True, map_location='cpu')['state_dict']
    assert sae.variant == 'released' and sae.tied
    assert sae.sizes == [16, 32, 64, 128] and sae.ks[0].tolist() == [2, 4, 8, 16]
    assert float(sae.theta[0]) == float((ck['model._threshold_sum'] / ck['model._threshold_count']).float())
    p = sae.provenance
    assert p['sha256'] == _sha256(release/CONFIG/'checkpoints'/'last.ckpt')
    assert (p['lightning_version'], p['global_step'], p['inference']) == ('2.5.5', 300, 'theta')

def test_ckpt_alone_and_with_hparams(release, tmp_path):
    "A .ckpt given directly (hparams one level up), and a .ckpt with no hparams.yaml (its own hyper_parameters)."
    check_codes(import_sae(release/CONFIG/'checkpoints'/'last.ckpt'), release)
    shutil.copy(release/CONFIG/'checkpoints'/'last.ckpt', tmp_path/'dinov3_sae.ckpt')
    sae = import_sae(tmp_path/'dinov3_sae.ckpt')
    assert sae.provenance['hparams_from'] == 'checkpoint'
    check_codes(sae, release)
    (tmp_path/'hparams.yaml').write_text(yaml.safe_dump(dict(input_dim=64, dictionary_sizes=[16, 32, 64, 128],
                                                             k_values=[4, 4, 8, 16])))
    with pytest.raises(CheckpointError, match='disagrees'): import_sae(tmp_path/'dinov3_sae.ckpt')
    with pytest.raises(CheckpointError, match='takes 64-d embeddings, the encoder gives 1024-d'):
        import_sae(release/CONFIG, input_dim=1024)

def _tiny_ckpt(path:Path, **changes)->Path:
    "A checkpoint in the release's format, with `changes` applied to its state dict (None removes a key)."
    g = torch.Generator().manual_seed(0)
    sd = {'model.encoder.weight': torch.randn(8, 4, generator=g), 'model.encoder.bias': torch.zeros(8),
          'model.bias': torch.zeros(4), 'model.inference_threshold': torch.tensor(0.1),
          'model._threshold_sum': torch.tensor(15.0), 'model._threshold_count': torch.tensor(150)}
    for k, v in changes.items():
        if v is None: sd.pop(k)
        else: sd[k] = v
    torch.save({'state_dict': sd, 'global_step': 150, 'hyper_parameters': dict(input_dim=4, dictionary_sizes=[4, 8],
                                                                               k_values=[1, 2])}, path)
    return path

class Payload: pass

def test_bad_checkpoints_are_named_errors(tmp_path):
    assert abs(read_released(_tiny_ckpt(tmp_path/'ok.ckpt')).provenance['theta'] - 0.1) < 1e-7
    torch.save({'state_dict': {}, 'payload': Payload()}, tmp_path/'pickle.ckpt')
    with pytest.raises(CheckpointError, match=r'pickle\.ckpt: refused'): import_sae(tmp_path/'pickle.ckpt')
    cases = {'missing.ckpt': (dict(**{'model.bias': None}), r"missing \['model.bias'\]"),
             'extra.ckpt': ({'model.decoder.weight': torch.zeros(4, 8)}, r"unexpected \['model.decoder.weight'\]"),
             'shape.ckpt': ({'model.encoder.weight': torch.zeros(8, 5)},
                            r"model.encoder.weight': \(\(8, 5\), \(8, 4\)\)"),
             'count.ckpt': ({'model._threshold_count': torch.tensor(0)}, '_threshold_count is 0'),
             'nan.ckpt': ({'model._threshold_sum': torch.tensor(float('nan'))}, 'is nan')}
    for name, (changes, msg) in cases.items():
        with pytest.raises(CheckpointError, match=msg) as e: import_sae(_tiny_ckpt(tmp_path/name, **changes))
        assert name in str(e.value)
    with pytest.raises(CheckpointError, match='expected a release folder'): import_sae(tmp_path)

HUB_CODE = """
import json, sys, numpy as np, torch
from sail.checkpoints import read_source
from sail.sae import encode, reconstruct
imp = read_source(sys.argv[1])
X = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], encode(imp.sae, X)[0].dense(imp.sae.sizes[-1]).numpy())
print(json.dumps(imp.provenance))
"""

def run_offline(tmp_path:Path, source:str, x:Path, out:Path, cache:Path):
    "Read `source` in a fresh process, offline, with the hub cache in `cache`, from an empty working directory."
    work = tmp_path/'work'; work.mkdir(exist_ok=True)
    env = os.environ | dict(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path/'hf-home'), HF_HUB_OFFLINE='1')
    env.pop('HF_TOKEN', None)
    r = subprocess.run([sys.executable, '-c', HUB_CODE, source, str(x), str(out)], env=env, cwd=work,
                       capture_output=True, text=True, timeout=300)
    assert list(work.iterdir()) == [], 'the hub path wrote into the working directory'
    return r

def test_hub_path_offline(release, tmp_path):
    "hf://pwesp/sail/dinov3_sae.ckpt through the real huggingface_hub calls, from a local cache in the hub's layout."
    x, codes, _ = expected(release)
    ck, hp = release/CONFIG/'checkpoints'/'last.ckpt', release/CONFIG/'hparams.yaml'
    snap = stage_hub_cache(tmp_path/'hub', 'pwesp/sail', {'dinov3_sae.ckpt': ck, 'hparams.yaml': hp})
    assert (tmp_path/'hub'/'models--pwesp--sail'/'snapshots'/snap.name/'dinov3_sae.ckpt').is_symlink()
    src, x_file = 'hf://pwesp/sail/dinov3_sae.ckpt', release/'inputs.npy'
    r = run_offline(tmp_path, src, x_file, tmp_path/'codes.npy', tmp_path/'hub')
    assert r.returncode == 0, r.stderr[-3000:]
    prov = json.loads(r.stdout.splitlines()[-1])
    assert prov['hub'] == dict(repo='pwesp/sail', path='dinov3_sae.ckpt', revision='main', commit=snap.name)
    assert prov['hparams_from'] == str(snap/'hparams.yaml') and prov['sha256'] == _sha256(ck)
    np.testing.assert_allclose(np.load(tmp_path/'codes.npy'), codes, atol=1e-6, rtol=0)
    # the hub repository as download_weights.sh reads it: the checkpoint alone, hparams from inside it
    stage_hub_cache(tmp_path/'hub2', 'pwesp/sail', {'dinov3_sae.ckpt': ck})
    r = run_offline(tmp_path, src, x_file, tmp_path/'c2.npy', tmp_path/'hub2')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.splitlines()[-1])['hparams_from'] == 'checkpoint'
    np.testing.assert_allclose(np.load(tmp_path/'c2.npy'), codes, atol=1e-6, rtol=0)
    # a file the cache does not have: a named error that says how to log in, never a traceback from the hub
    r = run_offline(tmp_path, 'hf://pwesp/sail/biomedparse_sae.ckpt', x_file, tmp_path/'c3.npy', tmp_path/'hub2')
    assert r.returncode != 0 and 'CheckpointError' in r.stderr and 'hf auth login' in r.stderr

def _young_released(steps:int, seed:int=3)->tuple:
    "A `released` SAE trained `steps` steps on random unit vectors, and 64 inputs."
    sae = MatryoshkaSAE(6, [4, 8], [1, 2], 'released', seeds=[seed])
    xs = torch.nn.functional.normalize(torch.randn(64, 6, generator=torch.Generator().manual_seed(2)), dim=1)
    for _ in range(steps): train_forward(sae.train(), xs)['loss'].backward()
    return sae.eval(), xs

@pytest.mark.filterwarnings('ignore:θ not estimated')
def test_save_and_load_agree(tmp_path):
    "Saved with the inference it had, a released SAE of < 100 steps loads to the codes it gave in memory."
    from sail.train import save_sae
    sae, xs = _young_released(20)
    assert inference_mode(sae) == 'topk-fallback'
    in_memory = encode(sae, xs)[0].dense(8)
    save_sae(sae, 0, tmp_path/'young', dict(inference=inference_mode(sae)))
    assert torch.equal(encode(read_saved(tmp_path/'young').sae, xs)[0].dense(8), in_memory)
    # without the key (folders saved before the rule): θ, as sail.train.load_sae reads them, which differs here
    cfg = json.loads((tmp_path/'young'/'config.json').read_text()); cfg.pop('inference')
    (tmp_path/'young'/'config.json').write_text(json.dumps(cfg))
    assert not torch.equal(encode(read_saved(tmp_path/'young').sae, xs)[0].dense(8), in_memory)
    # a model whose θ never existed records the fallback; claiming θ for it is a named error
    never, _ = _young_released(0)
    save_sae(never, 0, tmp_path/'never', dict(inference='theta'))
    with pytest.raises(CheckpointError, match="inference 'theta' but θ is nan"): read_saved(tmp_path/'never')

@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    "The lesson run with codes, scores and descriptions, and its SAE exported."
    from sail.steps import lesson_run
    from sail.codes import write_codes
    from sail.monosemanticity import score_all
    from sail.autointerp import AUTOINTERP, AutointerpSettings
    from sail.hub import export_sae
    lesson = lesson_run()
    write_codes(lesson.paths, lesson.cfg.sae); score_all(lesson.paths, lesson.cfg.eval)
    AUTOINTERP.make(lesson.paths, lesson.refs[0], AutointerpSettings(lesson.cfg.autointerp, lesson.cfg.eval))
    out = tmp_path_factory.mktemp('export')/'sail-pixels'
    return lesson, export_sae(lesson.paths, lesson.refs[0], out)

def _numbers(card:str)->list:
    "The numbers a model card prints as values: table rows' value cells and the prose (not names like 'top-10', 'L2')."
    text = '\n'.join(l.split('|')[2] if l.startswith('| ') else l for l in card.splitlines())
    return re.findall(r'-?\d+(?:\.\d+)?(?:e-?\d+)?', re.sub(r'top-\d+|\bL2\b|SHA-256|library_name', ' ', text))

def _leaves(obj)->list:
    if isinstance(obj, dict): return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, (list, tuple)): return [x for v in obj for x in _leaves(v)] + [obj]
    return [obj]

def test_export_files_and_manifest(exported):
    from sail.hub import fmt
    lesson, ex = exported
    ref, run = lesson.refs[0], lesson.paths.run
    man = json.loads((ex.folder/'manifest.json').read_text())
    for name, sha in man['files'].items(): assert sha == _sha256(ex.folder/name), name
    on_disk = {p.relative_to(ex.folder).as_posix() for p in ex.folder.rglob('*') if p.is_file()}
    assert set(man['files']) == on_disk - {'manifest.json'}
    assert (ex.folder/'model.safetensors').read_bytes() == (ref.folder/'model.safetensors').read_bytes()
    data = json.loads((ref.folder/'config.json').read_text())['data']
    assert (man['d'], man['sizes'], man['k'], man['data']) == (256, [8, 32], [2, 4], data)
    # M straight from the monosemanticity step's files, read without SAIL
    fs = pd.read_parquet(run/'results'/'monosemanticity'/ref.name/'feature_scores.parquet')
    cs = json.loads((run/'results'/'monosemanticity'/ref.name/'config_scores.json').read_text())
    assert man['metrics']['M_top10_mean'] == cs['M_top10_mean']
    assert man['metrics']['M_top10_mean'] == pytest.approx(fs.monosemanticity_10.nlargest(10).mean())
    table = pd.read_parquet(ex.folder/'features.parquet')
    merged = table.merge(fs[['feature', 'monosemanticity_10']], on='feature')
    np.testing.assert_array_equal(merged.M.to_numpy(), merged.monosemanticity_10.to_numpy())
    desc = pd.read_parquet(run/'results'/'autointerp'/ref.name/'descriptions.parquet')
    got = table.dropna(subset=['description']).set_index('feature')
    assert got.judge_rank.to_dict() == desc.set_index('feature').true_rank.astype(float).to_dict()
    assert man['metrics']['L0'] == json.loads((ref.folder/'artifact.json').read_text())['summary']['val_l0']
    # the card: every number it prints is a number of the manifest
    card = (ex.folder/'README.md').read_text()
    shown = ' '.join(fmt(v) + ' ' + str(v) for v in _leaves(man))
    for n in _numbers(card): assert n in shown, f"README.md shows {n}, which is not in manifest.json"
    assert f"| validation L0 | {fmt(man['metrics']['L0'])} |" in card

def test_export_round_trip_bit_identical(exported, tmp_path):
    from sail.train import load_sae, training_data
    lesson, ex = exported
    ref = lesson.refs[0]
    X = training_data(lesson.paths.data, ref.encoder)[1]
    mine = encode(load_sae(ref.folder), X)[0].dense(32)
    assert torch.equal(encode(import_sae(ex.folder), X)[0].dense(32), mine)
    np.save(tmp_path/'x.npy', X.numpy())
    stage_hub_cache(tmp_path/'hub', 'me/sail-pixels', {f: ex.folder/f for f in ex.files})
    r = run_offline(tmp_path, 'hf://me/sail-pixels', tmp_path/'x.npy', tmp_path/'codes.npy', tmp_path/'hub')
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path/'codes.npy'), mine.numpy())
    assert json.loads(r.stdout.splitlines()[-1])['manifest'] is True
    bad = tmp_path/'bad'; shutil.copytree(ex.folder, bad)
    with open(bad/'model.safetensors', 'r+b') as f: f.seek(100); b = f.read(1); f.seek(100); f.write(bytes([b[0] ^ 1]))
    with pytest.raises(CheckpointError, match=r'model\.safetensors: SHA-256 differs'): import_sae(bad)

@pytest.mark.filterwarnings('ignore:θ not estimated')
def test_export_of_a_young_released_sae(exported, tmp_path):
    "A released SAE saved with the fallback exports without a SAELens copy and imports to the same codes."
    from sail.train import save_sae, sae_ref
    from sail.hub import export_sae
    import sail.train as T
    lesson, _ = exported
    sae, xs = _young_released(20)
    ref = sae_ref(lesson.paths, 'pixels', 'released', 'D_4_8_K_1_2')
    save_sae(sae, 0, ref.folder, dict(encoder='pixels', inference=inference_mode(sae)))
    (ref.folder/'metrics.jsonl').write_text('')
    T.sae_artifact(ref).commit(dict(test=1), dict(val_l0=None))
    ex = export_sae(lesson.paths, ref, tmp_path/'young')
    assert ex.manifest['inference'] == 'topk-fallback' and not (ex.folder/'saelens').exists()
    assert torch.equal(encode(import_sae(ex.folder), xs)[0].dense(8), encode(sae, xs)[0].dense(8))

def test_export_refuses_a_foreign_folder(exported, tmp_path):
    from sail.hub import export_sae
    lesson, _ = exported
    (tmp_path/'mine').mkdir(); (tmp_path/'mine'/'notes.txt').write_text('keep')
    with pytest.raises(FileExistsError, match='not an earlier SAIL export'):
        export_sae(lesson.paths, lesson.refs[0], tmp_path/'mine')
    assert (tmp_path/'mine'/'notes.txt').read_text() == 'keep'

def _direct_codes(release:Path, X:np.ndarray)->np.ndarray:
    """The fixture SAE's inference codes of rows X from its checkpoint's tensors with NumPy alone: the release infers
    ReLU(pre - θ) (as SAELens's standard architecture with b_enc - θ), checked on the original's own codes first."""
    sd = torch.load(release/CONFIG/'checkpoints'/'last.ckpt', weights_only=True, map_location='cpu')['state_dict']
    W, b_enc, b_dec = (sd[k].double().numpy() for k in ('model.encoder.weight', 'model.encoder.bias', 'model.bias'))
    theta = float(sd['model._threshold_sum']) / float(sd['model._threshold_count'])
    codes = lambda x: np.maximum((x - b_dec) @ W.T + b_enc - theta, 0.0)
    x, want, _ = expected(release)
    np.testing.assert_allclose(codes(x.astype(np.float64)), want, atol=1e-6, rtol=0)
    return codes(X)

def test_pretrained_sae_in_a_run(release):
    "`sae.pretrained` for an encoder with 64-d embeddings: nothing trained, its codes are the fixture SAE's own."
    import dataclasses, pyarrow.parquet as pq
    from sail.steps import lesson_run
    from sail.embed import embed_encoder
    from sail.train import train_grids, trained_saes, sae_ref, sae_artifact, import_pretrained
    from sail.codes import write_codes, load_codes
    lesson = lesson_run(); cfg, paths = lesson.cfg, lesson.paths
    ec = dataclasses.replace(cfg.embed.encoders[0], image_size=8)                # pixels at 8 px: 64-d
    embed_encoder(paths.data, dataclasses.replace(cfg.embed, encoders=[ec]), cfg.compute, ec, force=True)
    src = str(release/CONFIG)
    scfg = dataclasses.replace(cfg.sae, pretrained={'pixels': src})
    res = train_grids(paths, scfg, cfg.compute, ['pixels'], ['paper'])
    assert res.stage.values == {} and list(res.table.variant) == ['released']  # no family trained
    ref = sae_ref(paths, 'pixels', 'released', CONFIG)
    assert ref in trained_saes(paths)
    rec = sae_artifact(ref).record()
    assert rec['inputs']['pretrained'] == src and rec['inputs']['sha256'] == _sha256(
        release/CONFIG/'checkpoints'/'last.ckpt')
    saved = json.loads((ref.folder/'config.json').read_text())
    assert saved['imported'] and saved['encoder'] == 'pixels' and saved['provenance']['kind'] == 'release'
    stamp = (ref.folder/'model.safetensors').stat().st_mtime_ns                 # a rerun: up to date, nothing written
    assert import_pretrained(paths, scfg, cfg.compute, 'pixels', src).fresh
    assert (ref.folder/'model.safetensors').stat().st_mtime_ns == stamp
    write_codes(paths, scfg, cfg.compute, [ref])
    emb = pq.read_table(paths.data/'embeddings'/'pixels.parquet').to_pandas().set_index('slice_id')
    assert np.stack(emb.embedding.to_numpy()).shape[1] == 64
    n = 0
    for split in ('train', 'val', 'test'):
        got = load_codes(paths, ref, split)
        X = np.stack(emb.loc[got.rows.slice_id, 'embedding'].to_numpy()).astype(np.float64)
        X = (X.astype(np.float32) / np.linalg.norm(X.astype(np.float32), axis=1, keepdims=True)).astype(np.float64)
        np.testing.assert_allclose(got.codes.toarray(), _direct_codes(release, X), atol=1e-5, rtol=0)
        n += len(X)
    assert n == len(emb)

def test_pretrained_sae_of_the_wrong_size(release, tmp_path):
    "A 64-d SAE named for a 256-d encoder: a named error, before anything is written."
    from sail.steps import lesson_run
    from sail.train import import_pretrained
    lesson = lesson_run()
    with pytest.raises(CheckpointError, match='this SAE takes 64-d embeddings, the encoder gives 256-d'):
        import_pretrained(lesson.paths, lesson.cfg.sae, lesson.cfg.compute, 'pixels', str(release/CONFIG))
    assert not (lesson.paths.run/'sae'/'pixels'/'released').exists()
