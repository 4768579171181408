"""What every benchmark shares (issue 27): where its figures go and how they reach the README.

A benchmark `benchmarks/<name>.py` measures its figures and the baseline in the same run, then calls `publish`: the
figures, the machine (CPU count and model, torch threads, GPU), the git commit and the date go to
`benchmarks/results/<name>.json`; its `render(result)` turns that JSON into Markdown (also kept as `<name>.md`); with
`--readme` the Markdown replaces the README's block between `<!-- <name with dashes>:start ... -->` and
`<!-- ...:end -->` (through `sail.docs.write_block`, the helper `sail docs refresh` writes its blocks with).
`tests/test_readme.py` renders every JSON with the same `render` and compares it with the README's block.
"""
import json, os, platform, subprocess, time
from pathlib import Path
from sail.core import project_root, write_json
from sail.docs import write_block

ROOT = project_root()
README = ROOT/'README.md'
RESULTS = Path(os.environ.get('SAIL_BENCH_RESULTS', ROOT/'benchmarks'/'results'))   # the tests write elsewhere

def markers(name:str)->tuple:
    "The README's start and end lines of benchmark `name`'s block (name: the script's stem)."
    block = name.replace('_', '-')
    return (f'<!-- {block}:start (written by benchmarks/{name}.py --readme; do not edit) -->', f'<!-- {block}:end -->')

def cpu_model()->str:
    "The CPU's model name, as /proc/cpuinfo (or the platform) gives it."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown CPU'

def machine()->dict:
    "The machine a benchmark ran on: CPU count and model, torch threads, the GPU if any."
    try:
        import torch
        threads, gpu = torch.get_num_threads(), (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError: threads, gpu = None, None
    return dict(cpus=os.cpu_count(), cpu_model=cpu_model(), torch_threads=threads, gpu=gpu)

def commit()->str:
    "The short hash of the checked-out commit (a dirty tree is marked '+')."
    git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return git('rev-parse', '--short', 'HEAD') + ('+' if git('status', '--porcelain', '--untracked-files=no') else '')

def stamp()->dict:
    "The fields every result carries: machine, commit, date and the machine's load average when it ended."
    return dict(machine=machine(), commit=commit(), when=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                load_avg=[round(x, 1) for x in os.getloadavg()])   # 1, 5, 15 min: how busy the machine was

def where(res:dict)->str:
    "One sentence fragment: the machine, the date and the commit of a result."
    m = res['machine']
    gpu = f", GPU {m['gpu']}" if m.get('gpu') else ', no GPU'
    busy = f", load average {res['load_avg'][2]:.1f} over the last 15 min" if res.get('load_avg') else ''
    return f"{m['cpus']} CPU cores ({m['cpu_model']}){gpu}{busy}; run of {res['when']}, commit {res['commit']}"

def load(name:str)->dict:
    "The stored result of benchmark `name`."
    return json.loads((RESULTS/f'{name}.json').read_text())

def publish(name:str, res:dict, render, readme:bool=False)->str:
    "Write `res` (stamped) to results/<name>.json, its rendering to <name>.md and, with `readme`, into the README."
    res = {**stamp(), **res}
    RESULTS.mkdir(parents=True, exist_ok=True); write_json(RESULTS/f'{name}.json', res)
    md = render(load(name))                                       # from the file, exactly as the test renders it
    (RESULTS/f'{name}.md').write_text(md + '\n'); print(md)
    if readme: write_block(README, md, markers(name))
    return md

def rewrite_readme(names:list)->None:
    "Render the stored results of the benchmarks `names` into their README blocks again (no measuring)."
    import importlib, sys
    sys.path.insert(0, str(Path(__file__).parent))
    for name in names: write_block(README, importlib.import_module(name).render(load(name)), markers(name))

if __name__ == '__main__':   # python benchmarks/common.py NAME ...: the README blocks of stored results, rendered again
    import sys
    rewrite_readme(sys.argv[1:])
