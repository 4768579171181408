"Killed training and interrupted code computation resume to exactly the uninterrupted result."
import json, sys, time, signal, shutil, subprocess
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from conftest import kill_at
from safetensors.torch import load_file
from sail.core import project_root
from sail.config import load_config
from sail.slices import slice_dataset
from sail.split import split_dataset
from sail.embed import embed_encoder
from sail.train import train_grid, sae_dir, sae_ref
from sail.codes import write_codes, load_codes, codes_dir, codes_artifact, _codes_inputs, to_torch_sparse, split_data
from sail.embed import load_embeddings
from sail.split import split_of

ROOT = project_root()

def _cfg(tmp_path, mini, name, data, epochs=30):
    p = tmp_path/f'{name}.yaml'
    p.write_text(f"""name: {name}
workers: 1
data: {{totalseg_root: {mini}, dir: {data}}}
embed: {{encoders: [{{name: pixels, image_size: 8}}]}}
sae: {{variants: [paper], families: [[8, 32]], k_patterns: [[2, 4], [4, 8]], epochs: {epochs}, batch_size: 16, lr: 1.0e-3, warmup_steps: 5}}
""")
    return p

@pytest.fixture
def prepared(mini, tmp_path):
    data = tmp_path/'data'
    cfg = load_config(_cfg(tmp_path, mini, f'_pytest_train_{tmp_path.name}', data))
    slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute); split_dataset(cfg.paths.data, cfg.split); embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, cfg.embed.encoders[0])
    yield tmp_path, data
    for p in ROOT.joinpath('runs').glob(f'_pytest_*{tmp_path.name}*'): shutil.rmtree(p, ignore_errors=True)

def test_killed_training_resumes_identically(mini, prepared):
    tmp_path, data = prepared
    ref = load_config(_cfg(tmp_path, mini, f'_pytest_ref_{tmp_path.name}', data))
    train_grid(ref.paths, ref.sae, ref.compute, 'pixels', 'paper')
    path = _cfg(tmp_path, mini, f'_pytest_kill_{tmp_path.name}', data)
    kill = load_config(path)
    state = sae_dir(kill.paths, 'pixels', 'paper')/'.family-8_32-0'/'state.json'
    code = f"from sail.config import load_config; from sail.train import train_grid; c = load_config({str(path)!r}); train_grid(c.paths, c.sae, c.compute, 'pixels', 'paper')"
    kill_at(code, 'train:epoch', 5)                                          # killed right after the fifth epoch's checkpoint
    epoch = json.loads(state.read_text())['epoch']
    assert epoch == 5
    train_grid(kill.paths, kill.sae, kill.compute, 'pixels', 'paper')
    for name in ['D_8_32_K_2_4', 'D_8_32_K_4_8']:
        a = load_file(str(sae_dir(ref.paths, 'pixels', 'paper')/name/'model.safetensors'))
        b = load_file(str(sae_dir(kill.paths, 'pixels', 'paper')/name/'model.safetensors'))
        for k in a: assert torch.equal(a[k], b[k]), (name, k)
        ma = [json.loads(l) for l in (sae_dir(ref.paths, 'pixels', 'paper')/name/'metrics.jsonl').read_text().splitlines()]
        mb = [json.loads(l) for l in (sae_dir(kill.paths, 'pixels', 'paper')/name/'metrics.jsonl').read_text().splitlines()]
        assert [m['epoch'] for m in mb] == list(range(1, 31)) and ma == mb

def test_codes_resume_and_readers(mini, prepared):
    tmp_path, data = prepared
    cfg = load_config(_cfg(tmp_path, mini, f'_pytest_codes_{tmp_path.name}', data, epochs=3))
    train_grid(cfg.paths, cfg.sae, cfg.compute, 'pixels', 'paper')
    name = 'D_8_32_K_4_8'
    ref = sae_ref(cfg.paths, 'pixels', 'paper', name)
    full = write_codes(cfg.paths, cfg.sae, cfg.compute, [ref])
    art = codes_artifact(cfg.paths, ref)
    summary = art.record()['summary']
    first = {s: (codes_dir(cfg.paths, ref)/f'{s}.parquet').read_bytes() for s in ['train', 'val']}
    (codes_dir(cfg.paths, ref)/'val.parquet').unlink()                                         # a lost file makes the codes stale
    assert not art.fresh(_codes_inputs(cfg.paths, ref, cfg.sae))
    again = write_codes(cfg.paths, cfg.sae, cfg.compute, [ref])                                # rewritten, identically
    for s in ['train', 'val']: assert (codes_dir(cfg.paths, ref)/f'{s}.parquet').read_bytes() == first[s]
    assert again.equals(full)
    m, rows = load_codes(cfg.paths, ref, 'val', ['plane'])
    assert m.shape == (len(rows), 32) and len(rows) > 0 and set(rows.columns) == {'slice_id', 'plane'}
    assert abs(np.diff(m.indptr).mean() - summary['splits']['val']['l0']) < 1e-9
    assert abs(full.val_l0.iloc[0] - summary['splits']['val']['l0']) < 1e-12
    assert torch.equal(to_torch_sparse(m).to_dense(), torch.from_numpy(m.toarray()))
    assert full.bytes_per_row.iloc[0] == (codes_dir(cfg.paths, ref)/'train.parquet').stat().st_size / summary['splits']['train']['rows']
    assert full.bytes_per_row.iloc[0] < full.dense_bytes_per_row.iloc[0]
    d = split_data(cfg.paths, ref, 'val', ['plane'], dense=True)                              # the one split loader
    emb, sl = load_embeddings(data, 'pixels', ['modality', 'image_id'])
    val = split_of(sl, data) == 'val'
    assert d.rows.slice_id.tolist() == sl.slice_id[val].tolist() and np.array_equal(d.dense, emb[val]) and (d.codes != m).nnz == 0
    e = split_data(cfg.paths, 'pixels', 'val', columns=['plane'], dense=True)
    assert e.codes is None and e.rows.equals(d.rows) and np.array_equal(e.dense, d.dense)
    stamp = (codes_dir(cfg.paths, ref)/'train.parquet').stat().st_mtime_ns
    retrain = write_codes(cfg.paths, cfg.sae, cfg.compute, [ref])                               # up to date: nothing rewritten
    assert retrain.equals(again) and (codes_dir(cfg.paths, ref)/'train.parquet').stat().st_mtime_ns == stamp

def test_checkpoint_record_travels_with_its_tensors(tmp_path):
    "A kill between writing the tensors and the readable state.json cannot desynchronise them: resuming reads the header."
    from sail.sae import MatryoshkaSAE
    from sail.train import save_state, resumable_epoch, load_state
    sae = MatryoshkaSAE(8, [4, 8], [[2, 4]], 'paper', True, seeds=[0]); opt = torch.optim.Adam(sae.parameters())
    save_state(tmp_path, sae, opt, dict(epoch=2, step=20, digest='d'))
    (tmp_path/'state.json').write_text(json.dumps(dict(epoch=1, step=10, digest='d')))   # as if killed before the copy was updated
    assert resumable_epoch(tmp_path, 'd') == 2 and load_state(tmp_path, sae, opt)['step'] == 20
    assert resumable_epoch(tmp_path, 'other settings') == 0
