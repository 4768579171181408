"""Peak memory of loading one encoder's training embeddings (`sail.train.training_data`) against the way it was done
before (normalise the whole table into one copy, then index the train and val rows out of it: two copies at once),
in the same run, each in a fresh process, on a scale-rehearsal data folder (benchmarks/scale_data.py).

Results go to benchmarks/results/training_data_memory.{json,md}; with --readme, between the README's
training-data-memory markers (the README has none yet: add them where the table should go).

    python benchmarks/training_data_memory.py [--data data/scale-10pct] [--encoder synth-1536] [--readme]
"""
import argparse, resource, subprocess, sys, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

CHILD = r'''
import json, resource, sys, time
import numpy as np, torch, torch.nn.functional as F
from sail.config import load_config
from sail.train import training_data
from sail.embed import load_embeddings
from sail.split import split_of
from sail.core import run_paths
cfg, enc, how = load_config(sys.argv[1], check_paths=False), sys.argv[2], sys.argv[3]
t = time.time()
if how == 'split-by-split': X_train, X_val, _ = training_data(cfg.paths.data, enc)
else:                                            # the earlier code: one normalised copy of every row, then the splits out of it
    emb, slices = load_embeddings(run_paths(cfg).data, enc, ['modality', 'image_id'])
    s = split_of(slices, run_paths(cfg).data)
    X = torch.empty(emb.shape, dtype=torch.float32)
    for i in range(0, len(X), 65536): X[i:i + 65536] = F.normalize(torch.tensor(emb[i:i + 65536]), dim=-1)
    X_train, X_val = X[torch.tensor(s == 'train')], X[torch.tensor(s == 'val')]
print(json.dumps(dict(peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seconds=time.time() - t,
                      rows=[len(X_train), len(X_val)], checksum=float(X_train[::997].sum() + X_val[::997].sum()))))
'''

def measure(config:str, enc:str, how:str)->dict:
    out = subprocess.run([sys.executable, '-c', CHILD, config, enc, how], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def render(r:dict)->str:
    "The table of peak memory and seconds of both ways of loading, from the JSON."
    rows = ['| load | peak RSS | seconds |', '|---|---|---|']
    for name, k in (('whole-table copy, then the splits (before)', 'before'),
                    ('split by split from the memory map (now)', 'now')):
        rows.append(f"| {name} | {r[k]['peak_mb']:.0f} MB | {r[k]['seconds']:.1f} |")
    now, before = r['now'], r['before']
    return '\n'.join(rows + ['', f"{r['encoder']} in `{r['data']}`: train {now['rows'][0]:,} + val {now['rows'][1]:,} "
                              f"rows; peak memory now / before ×{now['peak_mb'] / before['peak_mb']:.2f}, both in the "
                              f"same run. {where(r)}."])

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--data', default='data/scale-10pct')
    ap.add_argument('--encoder', default='synth-1536'); ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    config = f"{a.data}/scale.yaml"
    before, now = measure(config, a.encoder, 'whole-table-copy'), measure(config, a.encoder, 'split-by-split')
    assert before['rows'] == now['rows'] and abs(before['checksum'] - now['checksum']) < 1e-3, (before, now)
    publish('training_data_memory', dict(data=a.data, encoder=a.encoder, before=before, now=now), render, a.readme)
