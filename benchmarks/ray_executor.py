"""The Ray executor against the local one on this machine (issue 15): Ray's start-up cost and the wall time of the steps
that use the executor (slices, embed, train) at smoke size and on the demo, run by `sail run --force`:

- `local`: the default executor (slicing in a pool of `workers` processes, embedding and training in the kernel);
- `ray`: `executor: {kind: ray}` -- every step's kernel starts Ray on this machine, then one task per item;
- `ray-cluster`: `ray start --head` once, then `executor: {kind: ray, address: auto}` -- the steps join it.

`smoke` (configs/smoke.yaml: 20 scans, the pixel baseline and a tiny random ViT, 8 SAE families) runs them with all
three; `demo` (configs/demo.yaml: 48 scans, two learned encoders and their random twins, 12 SAEs) with `local` and
`ray-cluster` -- the part of the demo that depends on the executor (the other steps run the same code in the step's
kernel whichever executor is configured). Each variant slices the configuration's TotalSegmentator folder into a data
folder of its own (data/bench-executor-...). Ratios are against `local`, measured in the same run, and the run
records the machine's speed at its start (an fp32 GEMM) as the rehearsal does. Results go to
benchmarks/results/ray_executor.{json,md} and, with --readme, between the README's ray-executor markers.

    python benchmarks/ray_executor.py [--configs smoke demo] [--readme]
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path
import yaml
from sail.core import project_root
sys.path.insert(0, str(Path(__file__).parent))
from common import publish, where

ROOT = project_root()
STEPS = ['slices', 'split', 'embed', 'train']
EXECUTOR_STEPS = ('03_slices', '06_embed', '08_train')
SAIL = [sys.executable, '-c', 'import sys; from sail.cli import main; sys.exit(main())']

def startup_seconds(repeats:int=3)->list:
    "Seconds from `ray.init(num_cpus=2)` to the result of a first trivial task, in fresh processes."
    code = ("import time; t = time.time(); import ray; ray.init(num_cpus=2, include_dashboard=False, logging_level='ERROR');"
            "ray.get(ray.remote(lambda: 1).remote()); print(time.time() - t); ray.shutdown()")
    return [round(float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()[-1]), 1)
            for _ in range(repeats)]

PLAN = {'smoke': ('local', 'ray', 'ray-cluster'), 'demo': ('local', 'ray-cluster')}   # configuration -> executors measured
EXECUTORS = {'local': {'kind': 'local'}, 'ray': {'kind': 'ray'}, 'ray-cluster': {'kind': 'ray', 'address': 'auto'}}

def run_variant(config:str, label:str)->dict:
    "`sail run --force` of STEPS of configs/<config>.yaml with one executor, on a data folder of its own; the executor steps' seconds."
    raw = yaml.safe_load((ROOT/'configs'/f'{config}.yaml').read_text())
    name = f"bench-executor-{config}-{label}" if config != 'smoke' else f"bench-executor-{label}"
    raw |= dict(name=name, executor=EXECUTORS[label], data=dict(raw['data'], dir=f"data/{name}"))
    cfg = ROOT/'runs'/f"{name}.yaml"; cfg.parent.mkdir(exist_ok=True); cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.time()
    r = subprocess.run(SAIL + ['run', str(cfg), '--force', '--steps', *STEPS], cwd=ROOT, capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{config}/{label}: sail run failed\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    steps = json.loads((ROOT/'runs'/name/'manifest.json').read_text())['steps']
    return dict(config=config, label=label, executor=EXECUTORS[label], wall_s=round(time.time() - t0, 1),
                steps={s: steps[s]['duration_s'] for s in EXECUTOR_STEPS})

def ensure_dataset(config:str):
    "The configuration's TotalSegmentator-layout demo data, made by its demo step if missing (not timed: every variant slices it)."
    raw = yaml.safe_load((ROOT/'configs'/f'{config}.yaml').read_text())
    if not (ROOT/raw['data']['totalseg_root']).is_dir():
        r = subprocess.run(SAIL + ['run', config, '--steps', 'demo'], cwd=ROOT, capture_output=True, text=True)
        if r.returncode: raise SystemExit(f"{config}: could not build its demo data\n{r.stdout[-3000:]}{r.stderr[-3000:]}")

def gemm_ms(repeats:int=5)->float:
    "The machine's speed at the start: best milliseconds of an fp32 2048 x 1536 x 8192 product (as the scale rehearsal records)."
    import torch
    a, b = torch.randn(2048, 1536), torch.randn(1536, 8192); a @ b
    best = float('inf')
    for _ in range(repeats):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)

def table(res:dict)->str:
    "One table per configuration: seconds of the three executor steps, their sum and its ratio to local."
    out = []
    for config in dict.fromkeys(v.get('config', 'smoke') for v in res['variants']):
        vs = [v for v in res['variants'] if v.get('config', 'smoke') == config]; base = sum(vs[0]['steps'].values())
        head = ['executor'] + list(EXECUTOR_STEPS) + ['three steps', 'x local']
        lines = [f"**{config}** (`configs/{config}.yaml`)", '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for v in vs:
            tot = sum(v['steps'].values())
            lines.append('| ' + ' | '.join([v['label']] + [f"{v['steps'][s]:.1f} s" for s in EXECUTOR_STEPS]
                                          + [f"{tot:.1f} s ({tot / 60:.1f} min)", f"{tot / base:.2f}"]) + ' |')
        out.append('\n'.join(lines))
    s = res['startup_s']
    run = (where(res) if isinstance(res['machine'], dict)                     # older files: the machine as a string
           else f"{res['machine']}; run of {res['when']}, commit {res['commit']}")
    speed = f"; fp32 GEMM 2048x1536x8192 {res['gemm_ms']:.0f} ms at its start" if res.get('gemm_ms') else ''
    out.append(f"Ray start-up on this machine (`ray.init(num_cpus=2)` to a first task's result, fresh process): "
               f"{min(s):.1f}-{max(s):.1f} s over {len(s)} starts. {run}{speed}.")
    return '\n\n'.join(out)

render = table   # the README block of a stored result (tests/test_readme.py)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0]); ap.add_argument('--readme', action='store_true')
    ap.add_argument('--configs', nargs='+', choices=list(PLAN), default=list(PLAN))
    a = ap.parse_args()
    res = dict(gemm_ms=gemm_ms(), startup_s=startup_seconds(), variants=[])
    ray_cli = str(Path(sys.executable).parent/'ray')            # the `ray` command of this environment
    for config in a.configs:
        ensure_dataset(config)
        for label in PLAN[config]:
            if label == 'ray-cluster':
                subprocess.run([ray_cli, 'start', '--head', '--num-cpus', str(os.cpu_count()), '--include-dashboard', 'false'], check=True, capture_output=True)
            try: res['variants'].append(run_variant(config, label))
            finally:
                if label == 'ray-cluster': subprocess.run([ray_cli, 'stop'], capture_output=True)
            print(f"{config}/{label}: {sum(res['variants'][-1]['steps'].values()):.1f} s", flush=True)
    publish('ray_executor', res, table, a.readme)

if __name__ == '__main__': main()
