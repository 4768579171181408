"""The paper-scale rehearsal (issue 14): every step after embedding, on the synthetic dataset of `scale_data.py`, at a
share of the paper's rows and at all of them, on this machine -- with time and peak memory per step and how each grows.

For every fraction it writes the data (unless already there for the same fraction and seed), runs
`sail run configs/scale.yaml --force` (name and data folder adjusted; forced, so every step computes) on the steps
from split on, and reads the
run's manifest: seconds, peak RSS of the step's kernel and of the processes it started, and the sampled peak of the
whole process tree (kernels and joblib workers together). The table goes to
`benchmarks/results/scale_rehearsal.{json,md}` and, with --readme, between the README's scale-rehearsal markers.
Goals (issue 14): every step finishes, peak RSS <= 16 GB, the whole rehearsal <= 60 min on 2 cores.

    python benchmarks/scale_rehearsal.py [--fractions 0.1 1.0] [--steps split train ...] [--readme]
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
import yaml
sys.path.insert(0, str(Path(__file__).parent))
import scale_data
from sail.core import project_root
from sail.slices import slices_artifact
from common import publish, load, RESULTS

ROOT = project_root()
STEPS = ['split', 'train', 'codes', 'probes', 'monosemanticity', 'ranking', 'retrieval', 'autointerp', 'language', 'figures', 'explorer',
         'grounding']
SYNTHETIC_STEPS = ('grounding',)   # measured outside `sail run`: the synthetic slices have no images to map (see grounding_synthetic)
PEAK_RSS_GOAL_MB, TOTAL_MINUTES_GOAL = 16 * 1024, 60

def label(fraction:float)->str: return 'scale' if fraction == 1 else f'scale-{fraction * 100:g}pct'

def config_for(fraction:float, seed:int)->Path:
    "configs/scale.yaml with the name and data folder of this fraction, written into that folder."
    raw = yaml.safe_load((ROOT/'configs'/'scale.yaml').read_text())
    name = label(fraction); data = f'data/{name}'
    raw |= dict(name=name, data=dict(raw['data'], dir=data, totalseg_root=f'{data}/TotalSegmentator'))
    (ROOT/data).mkdir(parents=True, exist_ok=True)
    p = ROOT/data/'scale.yaml'; p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p

def ensure_data(fraction:float, seed:int, template:Path)->dict:
    "The synthetic data of this fraction: reused when its record says it was made with the same fraction and seed."
    data = ROOT/'data'/label(fraction)
    rec = slices_artifact(data).record()
    want = dict(generator=scale_data.GENERATOR, version=scale_data.VERSION, fraction=fraction, seed=seed)
    if rec and {k: rec['inputs'].get('synthetic', {}).get(k) for k in want} == want and all((data/'embeddings'/f'{e}.json').exists() for e in scale_data.SCALE_ENCODERS.values()):
        return dict(seconds=0.0, reused=True, n_slices=rec['summary']['n_slices'], n_scans=rec['summary']['n_scans'])
    r = scale_data.build(data, template, fraction, tuple(scale_data.SCALE_ENCODERS), seed)
    return dict(seconds=r.seconds, reused=False, n_slices=r.n_slices, n_scans=r.n_scans)

def _tree_rss_mb(root:int)->float:
    "Resident memory of a process and all its descendants now (Linux /proc), in MB."
    parent, rss = {}, {}
    for p in os.listdir('/proc'):
        if not p.isdigit(): continue
        try:
            parent[int(p)] = int(Path(f'/proc/{p}/stat').read_text().rsplit(')', 1)[1].split()[1])
            rss[int(p)] = int(Path(f'/proc/{p}/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
        except (OSError, ValueError, IndexError): pass
    tree, todo = {root}, [root]
    while todo:
        q = todo.pop(); kids = [p for p, pp in parent.items() if pp == q and p not in tree]; tree |= set(kids); todo += kids
    return sum(rss.get(p, 0.0) for p in tree)

def _sample_tree(proc:subprocess.Popen, manifest:Path, peaks:dict, every:float=0.5):
    """Peak resident memory of `sail run` and everything it started (kernels, joblib workers), per running step:
    sampled, because the manifest's child peak only counts processes that have exited."""
    while proc.poll() is None:
        try: step = next((s for s, v in json.loads(manifest.read_text())['steps'].items() if v['status'] == 'running'), None)
        except (OSError, ValueError, KeyError): step = None
        if step: peaks[step] = max(peaks.get(step, 0.0), _tree_rss_mb(proc.pid))
        time.sleep(every)

def gemm_ms(repeats:int=5)->float:
    """The machine's speed when a rehearsal starts: milliseconds of one fp32 2048 x 1536 x 8192 matrix product (the
    training step's largest), best of `repeats`. Rows measured on different days compare through it (a shared VM's
    speed drifts)."""
    import torch
    a, b = torch.randn(2048, 1536), torch.randn(1536, 8192); a @ b
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)

def grounding_synthetic(slices:int=2000, features:int=8192, k:int=160, cells:int=16)->dict:
    """The grounding step's scoring at the paper's size (`grounding.slices` slices, an 8,192-feature configuration, 16 x 16
    cells) on synthetic spatial tokens, in a process of its own: the rehearsal's embeddings are synthetic, so its slices
    have no images an encoder could map (benchmarks/grounding_benchmark.py, part b)."""
    code = ('import json, sys; sys.path.insert(0, "benchmarks"); import grounding_benchmark as g; '
            f'print(json.dumps(g.score_part({slices}, {features}, {k}, {cells})))')
    t = time.time(); r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        return dict(status='failed', seconds=round(time.time() - t, 1), peak_rss_mb=None, child_peak_rss_mb=None,
                    error=r.stderr[-500:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return dict(status='done', seconds=round(res['score_s'], 1), peak_rss_mb=round(res['peak_gb'] * 1e6 / 1024, 1),
                child_peak_rss_mb=None, error='')

def rehearse(fraction:float, steps:list, seed:int, template:Path)->dict:
    "Data, then `sail run` on the steps; the manifest's per-step numbers and the sampled peak of the process tree."
    import threading
    made = ensure_data(fraction, seed, template)
    speed = gemm_ms()
    cfg = config_for(fraction, seed); t0 = time.time(); peaks = {}
    run_steps = [s for s in steps if s not in SYNTHETIC_STEPS]
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; from sail.cli import main; sys.exit(main())', 'run', str(cfg), '--force', '--steps', *run_steps],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = threading.Thread(target=_sample_tree, args=(proc, ROOT/'runs'/label(fraction)/'manifest.json', peaks), daemon=True); sampler.start()
    out, err = proc.communicate(); sampler.join()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    wall = time.time() - t0
    manifest = json.loads((ROOT/'runs'/label(fraction)/'manifest.json').read_text())
    per_step = {s: dict(status=v.get('status'), seconds=v.get('duration_s'), peak_rss_mb=v.get('peak_rss_mb'),
                        child_peak_rss_mb=v.get('child_peak_rss_mb'), tree_peak_rss_mb=round(peaks[s], 1) if s in peaks else None,
                        error=(v.get('error') or '')[:500])
                for s, v in manifest['steps'].items() if s.split('_', 1)[-1] in steps}
    if 'grounding' in steps: per_step['11a_grounding (synthetic tokens)'] = grounding_synthetic()
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    pages = {p.name: p.stat().st_size for p in sorted((ROOT/'runs'/label(fraction)/'explorers').glob('*')) if p.is_file()}
    return dict(fraction=fraction, data=made, returncode=r.returncode, wall_s=round(wall, 1), steps=per_step, when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0)), commit=commit,
                pages=pages, gemm_ms=speed,
                tail=(r.stdout[-2000:] + r.stderr[-2000:]) if r.returncode else '')

def _peak(v:dict)->float|None:
    "A step's peak RSS: the largest of its kernel's, of an exited process it started, and of the sampled process tree."
    got = [x for x in (v['peak_rss_mb'], v['child_peak_rss_mb'], v.get('tree_peak_rss_mb')) if x is not None]
    return max(got) if got else None

def _mb(v): return '' if v is None else f'{v / 1024:.1f} GB' if v >= 1024 else f'{v:.0f} MB'

def _size(b:int)->str: return f'{b / 2**20:.1f} MB' if b >= 2**20 else f'{b / 2**10:.0f} KB'

def table(runs:list)->str:
    "One row per step: seconds and peak memory at every fraction, and the growth from the smallest to the largest."
    runs = sorted(runs, key=lambda r: r['fraction']); lo, hi = runs[0], runs[-1]
    head = ['step'] + [f"{r['fraction']:.0%}: time, peak RSS" for r in runs] + (['time x', 'memory x'] if len(runs) > 1 else [])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    names = list(dict.fromkeys(s for r in runs for s in r['steps']))
    for s in names:
        cells = []
        for r in runs:
            v = r['steps'].get(s)
            peak = _peak(v) if v else None
            cells.append('not run' if v is None else f"{v['status']}" if v['status'] != 'done' else f"{v['seconds']:.0f} s, {_mb(peak)}")
        if len(runs) > 1:
            a, b = lo['steps'].get(s), hi['steps'].get(s)
            ok = a and b and a['status'] == b['status'] == 'done' and a['seconds']
            cells += [f"{b['seconds'] / a['seconds']:.1f}" if ok else '', f"{(_peak(b) or 0) / (_peak(a) or 1):.1f}" if ok else '']
        lines.append('| ' + ' | '.join([s] + cells) + ' |')
    for r in runs:
        total = sum(v['seconds'] or 0 for v in r['steps'].values())
        peak = max([_peak(v) or 0 for v in r['steps'].values()] or [0])
        speed = f"; fp32 GEMM 2048x1536x8192 {r['gemm_ms']:.0f} ms at its start" if r.get('gemm_ms') else ''
        lines.append(f"\n{r['fraction']:.0%} of the paper's rows ({r['data']['n_slices']:,} slices, {r['data']['n_scans']:,} scans): steps {total / 60:.1f} min "
                     f"(goal <= {TOTAL_MINUTES_GOAL} min at 100 %), largest peak RSS {_mb(peak)} (goal <= {_mb(PEAK_RSS_GOAL_MB)}), "
                     f"data generated in {r['data']['seconds']:.0f} s{' (reused)' if r['data']['reused'] else ''}; `sail run` exit status {r['returncode']}"
                     f" (run of {r.get('when', 'an earlier session')}{', commit ' + r['commit'] if r.get('commit') else ''}"
                     f"{speed}).")
        if r.get('pages'):   # what a browser has to open: each page embeds its data (bounded by the explorer settings, not by rows)
            lines.append(f"Explorer pages at {r['fraction']:.0%}: " + ', '.join(f"`{n}` {_size(b)}" for n, b in r['pages'].items())
                         + f" ({_size(sum(r['pages'].values()))} in all; `plotly.min.js` is the library, shared by the pages).")
    if len(runs) > 1 and (len({r.get('gemm_ms') for r in runs}) > 1 or any(r.get('gemm_ms') is None for r in runs)):
        lines.append("\nThe rows were measured in different runs of this shared machine, whose speed drifts from day to day: a growth "
                     "ratio mixes both days' speeds (compare the GEMM times where both are recorded).")
    return '\n'.join(lines)

def render(res:dict)->str:
    "The README block of a stored rehearsal: the machine, the steps, the table."
    m = res['machine']
    machine = (m if isinstance(m, str)                                        # older files: the machine as a string
               else f"{m['cpus']} CPU cores ({m['cpu_model']}), {res['memory_gib']:.0f} GiB")
    return f"Machine: {machine}; steps {', '.join(res['steps'])}.\n\n" + table(res['runs'])

def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--fractions', type=float, nargs='+', default=[0.1, 1.0])
    ap.add_argument('--steps', nargs='+', default=STEPS); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--template', default='data/demo'); ap.add_argument('--readme', action='store_true')
    a = ap.parse_args(argv)
    memory_gib = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    kept = load('scale_rehearsal')['runs'] if (RESULTS/'scale_rehearsal.json').exists() else []
    runs = [r for r in kept if r['fraction'] not in a.fractions and r['steps']]   # earlier runs at other fractions stay in the table
    for f in a.fractions:
        print(f"rehearsal at {f:.0%} of the paper's rows ...", flush=True)
        runs.append(rehearse(f, a.steps, a.seed, ROOT/a.template))
        print(table(runs), flush=True)
        if runs[-1]['returncode']: print(runs[-1]['tail'], file=sys.stderr)
    publish('scale_rehearsal', dict(memory_gib=memory_gib, steps=a.steps, runs=runs), render, a.readme)
    return max(r['returncode'] for r in runs)

if __name__ == '__main__': sys.exit(main())
