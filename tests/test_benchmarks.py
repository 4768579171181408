"""`benchmarks/gpu_check.py` in its reduced mode: every section through SAIL's own device code, on the CPU, so the
command a GPU machine runs cannot rot (issue 14). No timing is asserted -- only that each section ran and reported.
And the shared publishing of every benchmark (issue 27): its JSON, stamped with machine, commit and date, and the README
block rendered from that JSON; three benchmarks at toy size through their command lines."""
import importlib, json, subprocess, sys
from conftest import ROOT

def test_gpu_check_runs_every_section_reduced_on_the_cpu(tmp_path):
    out = tmp_path/'gpu_check.json'
    r = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', '--reduced', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got['mode'] == 'reduced' and got['device'] == 'cpu'
    checks = [row['check'] for row in got['rows']]
    for section in ('train d 96', 'train d 64', 'grid of', 'codes d', 'retrieval k-sweep', 'embed DINOv3', 'embed BiomedParse',
                    'bf16 vs fp32'):
        assert sum(c.startswith(section) for c in checks) == 1, (section, checks)
    speed = [row for row in got['rows'] if not row['check'].startswith('bf16')]
    assert all(row['ok'] is None for row in speed)                      # reduced shapes judge no speed goal ...
    parity, = [row for row in got['rows'] if row['check'].startswith('bf16')]
    assert parity['ok'] is True, parity                                 # ... but bf16 parity is judged everywhere
    assert '| check | measured |' in r.stdout                          # the table a GPU run puts in the README

# --- issue 27: every benchmark writes benchmarks/results/<name>.json and renders its README block from it ---
import os, pytest
sys.path.insert(0, str(ROOT/'benchmarks'))
import common

def test_publish_writes_the_stamped_json_and_the_block_rendered_from_it(tmp_path, monkeypatch):
    readme = tmp_path/'README.md'
    start, end = common.markers('toy_bench')
    readme.write_text(f"# x\n\n{start}\nold\n{end}\n\nafter\n")
    monkeypatch.setattr(common, 'RESULTS', tmp_path/'results'); monkeypatch.setattr(common, 'README', readme)
    def render(r):
        ratio = r['base_s'] / r['ours_s']
        return f"| base | ours |\n|---|---|\n| {r['base_s']:.1f} s | {r['ours_s']:.1f} s (×{ratio:.1f}) |"
    md = common.publish('toy_bench', dict(base_s=3.0, ours_s=1.5), render, readme=True)
    got = json.loads((tmp_path/'results'/'toy_bench.json').read_text())
    assert {'cpus', 'cpu_model', 'torch_threads', 'gpu'} <= set(got['machine'])
    assert got['machine']['cpus'] == os.cpu_count()
    assert got['commit'] and got['when'].endswith('UTC') and got['base_s'] == 3.0
    assert md == render(got) and '(×2.0)' in md
    assert readme.read_text() == f"# x\n\n{start}\n{md}\n{end}\n\nafter\n"
    assert (tmp_path/'results'/'toy_bench.md').read_text() == md + '\n'

@pytest.mark.parametrize('script, args, ratio', [
    ('embed_loading', ['--n', '2000', '--dim', '64'], lambda r: r['reference_s'] / r['sail_s']),
    ('recovery_benchmark', ['--rows', '300', '--features', '512', '--k', '20'],
     lambda r: r['reference_s'] / r['sail_s']),
    ('monosemanticity_benchmark', ['--rows', '3000', '--features', '512', '--k', '20', '--baseline-features', '4'],
     lambda r: r['reference_s'] / r['sail_s']),
])
def test_a_benchmark_at_toy_size_writes_its_result_and_baseline(tmp_path, script, args, ratio):
    r = subprocess.run([sys.executable, f'benchmarks/{script}.py', *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, SAIL_BENCH_RESULTS=str(tmp_path)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads((tmp_path/f'{script}.json').read_text())
    assert got['machine']['cpus'] == os.cpu_count() and got['commit']
    assert ratio(got) > 0                                                   # SAIL and its baseline, in one run
    assert (tmp_path/f'{script}.md').read_text() == importlib.import_module(script).render(got) + '\n'
