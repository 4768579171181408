"""A synthetic dataset of the paper's size for the scale rehearsal (issue 14), written where the slices and embed steps
write theirs, so every later step runs on it unchanged.

* **Slice table** (909,873 rows, 1,844 scans: 1,228 CT and 616 MRI, 10 institutes): every synthetic scan is a real
  demo scan of its modality (`data/demo`, made by `sail run demo --steps demo slices`) stretched along each plane to
  the paper's slices per scan, so organ flags keep their real correlation with plane and position and the metadata
  columns keep the dataset's schema; age, sex and institute are redrawn per scan (institutes A...J with unequal
  sizes, ages 18-95). Slice images are the template's (the `images/` folder links to the demo's).
* **Embeddings** (one file per dimension, 1024 and 1536 by default): each row is a non-negative sparse combination of
  a hidden unit-norm dictionary -- one atom per organ present, one per plane, modality and institute, eight drawn at
  random -- plus Gaussian noise and a common offset, so features and probes have something to find.

Both are recorded as finished artifacts (`slices.json`, `embeddings/<id>.json`) whose inputs name this generator, its
seed and fraction: the slices and embed steps never pass them off as their own output.

    python benchmarks/scale_data.py [--fraction 0.1] [--data data/scale] [--template data/demo]
"""
import argparse, dataclasses, shutil, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, scipy.sparse as sp
from sail.core import digest, atomic_path, write_csv
from sail.config import EncoderConfig
from sail.slices import load_slices, slices_artifact, SLICE_COLUMNS
from sail.totalseg import age_bin
from sail.embed import embeddings_artifact, slice_ids_digest, _ipc_copy

PAPER_SCANS = dict(ct=1228, mri=616)        # paper §3.1: TotalSegmentator CT v2.0.1 and MRI v2.0.0
PAPER_SLICES = 909_873                      # paper §3.1: slices of all scans
INSTITUTES = list('ABCDEFGHIJ')             # the dataset's ten institutes (A, D, E are the test split, spec §4.2)
INSTITUTE_WEIGHTS = np.array([14, 11, 9, 8, 8, 7, 7, 6, 5, 4], float)  # unequal sizes, as in the dataset
SCALE_ENCODERS = {1024: 'synth-1024', 1536: 'synth-1536'}              # embedding size -> encoder id in configs/scale.yaml
GENERATOR = 'benchmarks/scale_data.py'
VERSION = 2                                 # of what the generator draws: a new version makes new data

@dataclasses.dataclass
class ScaleData:
    "What `build` wrote."
    data: Path            # the processed-data folder
    n_scans: int
    n_slices: int
    embeddings: dict      # encoder id -> dim
    seconds: float

def _largest_remainder(x:np.ndarray, total:int)->np.ndarray:
    "Integers >= 1 proportional to x that sum to `total`."
    base = np.maximum(np.floor(x).astype(np.int64), 1); left = total - base.sum()
    if left > 0: base[np.argsort(-(x - np.floor(x)), kind='stable')[:left]] += 1
    elif left < 0:
        for i in np.argsort(-base, kind='stable')[:-left]: base[i] -= 1
    return base

def slice_table(template:pd.DataFrame, fraction:float, seed:int)->tuple:
    "(slices, scans as (modality, image_id, template image_id, n_slices)) of the synthetic dataset."
    g = np.random.default_rng(seed)
    runs = template.groupby(['modality', 'image_id', 'plane'], sort=True).indices       # template rows of each (scan, plane)
    by_mod = {m: sorted({i for (mm, i, _) in runs if mm == m}) for m in PAPER_SCANS}
    scans = []                                                                          # (modality, new id, template id)
    for m, n in PAPER_SCANS.items():
        k = max(1, round(n * fraction)); picks = g.permutation(np.resize(by_mod[m], k))
        scans += [(m, f's{j:05d}', t) for j, t in enumerate(picks)]
    parts = [(m, new, t, p, runs[(m, t, p)]) for m, new, t in scans for (mm, tt, p) in [k for k in runs if k[0] == m and k[1] == t]]
    want = np.array([len(r) for *_, r in parts], float) * g.uniform(0.8, 1.2, len(parts))
    counts = _largest_remainder(want / want.sum() * round(PAPER_SLICES * fraction), round(PAPER_SLICES * fraction))
    src = np.concatenate([r[np.minimum((np.arange(c) * len(r)) // c, len(r) - 1)] for (*_, r), c in zip(parts, counts)])
    df = template.iloc[src].reset_index(drop=True)
    index = np.concatenate([np.arange(c) for c in counts]).astype(np.int32)
    new_ids = np.repeat([new for _, new, *_ in parts], counts)
    df['image_id'] = pd.array(new_ids, dtype='string'); df['slice_index'] = index
    df['slice_id'] = pd.array([f'{m}_{i}_{p}_{j:04d}' for m, i, p, j in zip(df.modality, new_ids, df.plane, index)], dtype='string')
    per_scan = pd.DataFrame(scans, columns=['modality', 'image_id', 'template'])
    per_scan['age'] = np.clip(np.round(g.normal(62, 14, len(per_scan))), 18, 95)
    per_scan['gender'] = g.choice(['m', 'f'], len(per_scan), p=[0.56, 0.44])
    per_scan['institute'] = g.choice(INSTITUTES, len(per_scan), p=INSTITUTE_WEIGHTS / INSTITUTE_WEIGHTS.sum())
    keyed = df[['modality', 'image_id']].merge(per_scan, on=['modality', 'image_id'], how='left', validate='many_to_one')
    df['age'] = pd.array(keyed.age, dtype='Float64'); df['age_bin'] = age_bin(keyed.age).array
    df['gender'] = pd.array(keyed.gender, dtype='string'); df['institute'] = pd.array(keyed.institute, dtype='string')
    per_scan['n_slices'] = df.groupby(['modality', 'image_id'], sort=False).size().reindex(pd.MultiIndex.from_frame(per_scan[['modality', 'image_id']])).to_numpy()
    return df[SLICE_COLUMNS], per_scan

def embeddings(
    flags:np.ndarray,  # (N, C) bool organ flags
    codes:dict,        # name -> (N,) int codes 0..V-1 of plane, modality, institute
    d:int,             # embedding size
    seed:int,          # seed of the dictionary and the draws
    chunk:int=65_536,  # rows per block
):
    """Yields (rows, d) float32 blocks: per row, organ atoms (weight U(0.5, 1.5)), its plane, modality and institute
    atoms, eight random atoms (U(0, 1)), noise of std 0.02 per dimension and a common offset."""
    g = np.random.default_rng(seed); n, C = flags.shape
    fixed = {k: int(v.max()) + 1 for k, v in codes.items()}             # sizes of the plane / modality / institute vocabularies
    n_atoms = C + sum(fixed.values()) + 4096
    atoms = g.standard_normal((n_atoms, d), dtype=np.float32); atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    offset = 0.5 * g.standard_normal(d).astype(np.float32) / np.sqrt(d) * 4
    for s in range(0, n, chunk):
        e = min(s + chunk, n); b = e - s; r = np.random.default_rng([seed, s])
        rr, cc = np.nonzero(flags[s:e]); vv = r.uniform(0.5, 1.5, len(rr))
        cols, base = [cc], C
        rows, vals = [rr], [vv]
        for k, v in codes.items():
            rows.append(np.arange(b)); cols.append(base + v[s:e]); vals.append(np.ones(b)); base += fixed[k]
        rnd = r.integers(base, n_atoms, (b, 8))
        rows.append(np.repeat(np.arange(b), 8)); cols.append(rnd.ravel()); vals.append(r.uniform(0, 1, b * 8))
        F = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(b, n_atoms), dtype=np.float32)
        X = np.asarray(F @ atoms, np.float32) + 0.02 * r.standard_normal((b, d), dtype=np.float32) + offset
        yield X

def build(
    data:str|Path='data/scale',        # processed-data folder to write (config `data.dir` of configs/scale.yaml)
    template:str|Path='data/demo',     # a processed-data folder with real slices (the demo's)
    fraction:float=1.0,                # share of the paper's scans and slices
    dims:tuple=(1024, 1536),           # embedding sizes, one file each (ids in SCALE_ENCODERS)
    seed:int=0,                        # seed of everything drawn
)->ScaleData:
    "Write the synthetic slice table and embeddings, each as a finished artifact."
    t0 = time.time(); data, template = Path(data), Path(template)
    tpl = load_slices(template)
    df, per_scan = slice_table(tpl, fraction, seed)
    data.mkdir(parents=True, exist_ok=True)
    (data/'TotalSegmentator').mkdir(exist_ok=True)
    (data/'TotalSegmentator'/'README.txt').write_text(f"Synthetic dataset ({GENERATOR}): no volumes; slices.parquet and embeddings/ were generated.\n")
    if not (data/'images').exists(): (data/'images').symlink_to((template/'images').resolve(), target_is_directory=True)
    art = slices_artifact(data)
    with atomic_path(art.path('slices.parquet')) as tmp: df.to_parquet(tmp, index=False)
    tscans = pd.read_parquet(slices_artifact(template).path('scans.parquet'))
    scans = per_scan.merge(tscans.drop(columns=['n_slices']).rename(columns={'image_id': 'template'}), on=['modality', 'template'], how='left')
    with atomic_path(art.path('scans.parquet')) as tmp: scans.drop(columns=['template']).to_parquet(tmp, index=False)
    write_csv(art.path('slice_failures.csv'), pd.DataFrame(columns=['item', 'stage', 'reason']))
    inputs = dict(synthetic=dict(generator=GENERATOR, version=VERSION, fraction=fraction, seed=seed, template=slices_artifact(template).digest))
    art.commit(inputs, dict(n_scans=len(per_scan), n_sliced=len(per_scan), n_failed=0, n_slices=len(df), synthetic=True,
                            slices_per_plane={f'{m}/{p}': int(c) for (m, p), c in df.groupby(['modality', 'plane']).size().items()}))
    flag_cols = [c for c in SLICE_COLUMNS if pd.api.types.is_bool_dtype(tpl[c])]
    flags = df[flag_cols].to_numpy(bool)
    codes = {k: pd.factorize(df[k], sort=True)[0] for k in ('plane', 'modality', 'institute')}
    ids = pa.array(df.slice_id.to_numpy(dtype=object), pa.string())
    slices_digest = slices_artifact(data).digest
    made = {}
    for d in dims:
        enc_id = SCALE_ENCODERS[d]; out = embeddings_artifact(data, enc_id); p = out.path(f'{enc_id}.parquet'); p.parent.mkdir(exist_ok=True)
        description = dict(encoder=enc_id, dim=d, weights='none', model=f'synthetic structured embeddings ({GENERATOR}, seed {seed + d})',
                           feature='sparse non-negative combination of a hidden dictionary (organ, plane, modality, institute and random atoms) plus noise')
        inputs = dict(slices=slices_digest, encoder=dataclasses.asdict(EncoderConfig('random:dinov3', id=enc_id)), description=description,
                      dtype='float32', device='cpu', synthetic=GENERATOR)
        made[enc_id] = d
        if out.fresh(inputs): continue                                  # made earlier from the same slice table and seed
        scratch = p.parent/f'.{enc_id}.f32'          # the matrix, built block by block in a file-backed map: never all in anonymous memory
        X_all = np.memmap(scratch, np.float32, 'w+', shape=(len(df), d)); s = 0
        for X in embeddings(flags, codes, d, seed + d): X_all[s:s + len(X)] = X; s += len(X)
        X_all.flush()
        flat = pa.Array.from_buffers(pa.float32(), X_all.size, [None, pa.py_buffer(X_all)])     # zero-copy views of the map
        table = pa.table({'slice_id': ids, 'embedding': pa.FixedSizeListArray.from_arrays(flat, d)})
        with atomic_path(p) as tmp: pq.write_table(table, tmp, compression='none', row_group_size=65_536)
        ipc = p.with_name(f'.{p.stem}.arrow')          # the memory-mappable copy `load_embeddings` reads, in one chunk, from the map
        with atomic_path(ipc) as tmp:
            with pa.OSFile(str(tmp), 'wb') as f, pa.ipc.new_file(f, table.schema) as w: w.write_table(table, max_chunksize=len(df))
        del table, flat, X_all; scratch.unlink()
        _ipc_copy(p)                                   # newer than the parquet: kept as written
        out.commit(inputs, dict(encoder=enc_id, description=description, dtype='float32', dim=d, n_rows=len(df), n_slices=len(df),
                                slices_digest=slice_ids_digest(df), failures=[], seconds=None))
    return ScaleData(data, len(per_scan), len(df), made, round(time.time() - t0, 1))

def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default='data/scale'); ap.add_argument('--template', default='data/demo')
    ap.add_argument('--fraction', type=float, default=1.0); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--dims', type=int, nargs='+', default=[1024, 1536])
    a = ap.parse_args(argv)
    if not slices_artifact(a.template).record():
        print(f"{a.template}: no slice table to take scans from; run `sail run demo --steps demo slices` first", file=sys.stderr); return 1
    r = build(a.data, a.template, a.fraction, tuple(a.dims), a.seed)
    print(f"{r.data}: {r.n_scans:,} scans, {r.n_slices:,} slices, embeddings {r.embeddings} in {r.seconds:.0f} s")
    return 0

if __name__ == '__main__': sys.exit(main())
