"""Loading embeddings: SAIL's zero-copy memory-mapped matrix against the reference's row-by-row decoding of byte blobs.

The reference stores each embedding as raw float32 bytes in a per-row `embedding` column and decodes it in a Python
loop (`table[col][i].as_py()` into a preallocated array, spec §3.6). SAIL stores `fixed_size_list<float32>[d]` and maps
an Arrow IPC copy (written once, when the embedding step merges its shards) into one (n, d) array. Same data, same run.
Results go to benchmarks/results/embed_loading.{json,md} and, with --readme, between the README's embed-loading markers.

    python benchmarks/embed_loading.py [--n 50000] [--dim 1024] [--readme]
"""
import argparse, sys, time, tempfile, shutil
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
from sail.embed import _embedding_table, _ipc_copy
import sail.embed as E

def reference_decode(path, dim):
    t = pq.read_table(path)
    col = t.column('embedding'); out = np.empty((t.num_rows, dim), np.float32)
    for i in range(t.num_rows): out[i] = np.frombuffer(col[i].as_py(), dtype=np.float32)
    return out

def sail_load(path, dim):
    tab = pa.ipc.open_file(pa.memory_map(str(_ipc_copy(path)))).read_all()
    return tab.column('embedding').chunk(0).values.to_numpy(zero_copy_only=True).reshape(tab.num_rows, dim)

def render(r:dict)->str:
    "The README's row for this benchmark, from its JSON."
    ref, ours, read = r['reference_s'], r['sail_s'], r['read_all_s']
    return '\n'.join([
        '| measure | baseline | SAIL | ratio |', '|---|---|---|---|',
        f"| loading {r['n']:,} × {r['dim']} float32 embeddings | {ref:.2f} s (byte blobs decoded row by row, the "
        f"reference's format) | {ours:.4f} s (memory-mapped zero-copy view; {read:.3f} s to read every value) | "
        f"×{ref / ours:,.0f} (×{ref / (ours + read):,.0f} including a full read) |",
        '', f"Baseline and SAIL on the same {r['mib']:.0f} MiB of embeddings in the same run; identical arrays. "
            f"{where(r)}."])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=50000); ap.add_argument('--dim', type=int, default=1024)
    ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    try:
        emb = np.random.default_rng(0).standard_normal((a.n, a.dim), dtype=np.float32)
        ids = [f's{i}' for i in range(a.n)]
        pq.write_table(pa.table({'slice_id': ids, 'embedding': [r.tobytes() for r in emb]}), d/'blobs.parquet')
        pq.write_table(_embedding_table(ids, emb), d/'sail.parquet')
        _ipc_copy(d/'sail.parquet')                                           # written by the merge step, once
        t = time.perf_counter(); ref = reference_decode(d/'blobs.parquet', a.dim); t_ref = time.perf_counter() - t
        t = time.perf_counter(); ours = sail_load(d/'sail.parquet', a.dim); t_ours = time.perf_counter() - t
        t = time.perf_counter(); s = float(ours.sum(dtype=np.float64)); t_touch = time.perf_counter() - t
        assert np.array_equal(ref, ours)
    finally: shutil.rmtree(d)
    res = dict(n=a.n, dim=a.dim, mib=emb.nbytes / 2**20, reference_s=t_ref, sail_s=t_ours, read_all_s=t_touch)
    publish('embed_loading', res, render, a.readme)

if __name__ == '__main__': main()
