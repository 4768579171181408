"""The Ray executor against the local one on this machine (issue 15): Ray's start-up cost, and the wall time of the
steps that use the executor (slices, embed, train) on the demo dataset at smoke size (configs/smoke.yaml: 20 scans,
the pixel baseline and a tiny random ViT, 8 SAE families), run by `sail run --force`:

- `local`: the default executor (slicing in a pool of `workers` processes, embedding and training in the kernel);
- `ray`: `executor: {kind: ray}` -- every step's kernel starts Ray on this machine, then one task per item;
- `ray, cluster`: `ray start --head` once, then `executor: {kind: ray, address: auto}` -- the steps join it.

Ratios are against `local`, measured in the same run. Results go to benchmarks/results/ray_executor.{json,md} and,
with --readme, between the README's ray-executor markers.

    python benchmarks/ray_executor.py [--readme]
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
import yaml
from sail.core import project_root, write_json
from sail.docs import replace_block

ROOT = project_root()
STEPS = ['slices', 'split', 'embed', 'train']
EXECUTOR_STEPS = ('03_slices', '06_embed', '08_train')
RESULTS = ROOT/'benchmarks'/'results'
README_MARKERS = ('<!-- ray-executor:start (written by benchmarks/ray_executor.py --readme; do not edit) -->', '<!-- ray-executor:end -->')
SAIL = [sys.executable, '-c', 'import sys; from sail.pipeline import main; sys.exit(main())']

def startup_seconds(repeats:int=3)->list:
    "Seconds from `ray.init(num_cpus=2)` to the result of a first trivial task, in fresh processes."
    code = ("import time; t = time.time(); import ray; ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR');"
            "ray.get(ray.remote(lambda: 1).remote()); print(time.time() - t); ray.shutdown()")
    return [round(float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()[-1]), 1)
            for _ in range(repeats)]

def run_variant(label:str, executor:dict)->dict:
    "`sail run` of the executor steps with this executor on a fresh copy of the smoke data folder; per-step seconds."
    raw = yaml.safe_load((ROOT/'configs'/'smoke.yaml').read_text())
    name = f"bench-executor-{label}"
    raw |= dict(name=name, executor=executor, data=dict(raw['data'], dir=f"data/{name}"))
    cfg = ROOT/'runs'/f"{name}.yaml"; cfg.parent.mkdir(exist_ok=True); cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.time()
    r = subprocess.run(SAIL + ['run', str(cfg), '--force', '--steps', *STEPS], cwd=ROOT, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{label}: sail run failed\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    steps = json.loads((ROOT/'runs'/name/'manifest.json').read_text())['steps']
    return dict(label=label, executor=executor, wall_s=round(time.time() - t0, 1),
                steps={s: steps[s]['duration_s'] for s in EXECUTOR_STEPS})

def table(res:dict)->str:
    base = res['variants'][0]
    head = ['executor'] + list(EXECUTOR_STEPS) + ['three steps', 'x local']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for v in res['variants']:
        tot = sum(v['steps'].values())
        lines.append('| ' + ' | '.join([v['label']] + [f"{v['steps'][s]:.1f} s" for s in EXECUTOR_STEPS]
                                      + [f"{tot:.1f} s", f"{tot / sum(base['steps'].values()):.2f}"]) + ' |')
    s = res['startup_s']
    lines.append(f"\nRay start-up on this machine (`ray.init(num_cpus=2)` to a first task's result, fresh process): "
                 f"{min(s):.1f}-{max(s):.1f} s over {len(s)} starts. {res['machine']}; run of {res['when']}, commit {res['commit']}.")
    return '\n'.join(lines)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0]); ap.add_argument('--readme', action='store_true')
    a = ap.parse_args()
    res = dict(machine=f"{os.cpu_count()} CPU cores", when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
               commit=subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
               startup_s=startup_seconds(), variants=[run_variant('local', {'kind': 'local'}), run_variant('ray', {'kind': 'ray'})])
    ray_cli = str(Path(sys.executable).parent/'ray')            # the `ray` command of this environment
    subprocess.run([ray_cli, 'start', '--head', '--num-cpus', str(os.cpu_count()), '--include-dashboard', 'false'], check=True, capture_output=True)
    try: res['variants'].append(run_variant('ray-cluster', {'kind': 'ray', 'address': 'auto'}))
    finally: subprocess.run([ray_cli, 'stop'], capture_output=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS/'ray_executor.json', res)
    md = table(res); (RESULTS/'ray_executor.md').write_text(md + '\n'); print(md)
    if a.readme:
        p = ROOT/'README.md'; p.write_text(replace_block(p.read_text(), md, README_MARKERS))

if __name__ == '__main__': main()
