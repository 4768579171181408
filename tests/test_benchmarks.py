"""`benchmarks/gpu_check.py` in its reduced mode: every section through SAIL's own device code, on the CPU, so the
command a GPU machine runs cannot rot (issue 14). No timing is asserted -- only that each section ran and reported."""
import json, subprocess, sys
from conftest import ROOT

def test_gpu_check_runs_every_section_reduced_on_the_cpu(tmp_path):
    out = tmp_path/'gpu_check.json'
    r = subprocess.run([sys.executable, 'benchmarks/gpu_check.py', '--reduced', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got['mode'] == 'reduced' and got['device'] == 'cpu'
    checks = [row['check'] for row in got['rows']]
    for section in ('train d 96', 'train d 64', 'grid of', 'codes d', 'retrieval k-sweep', 'embed DINOv3', 'bf16 vs fp32'):
        assert sum(c.startswith(section) for c in checks) == 1, (section, checks)
    speed = [row for row in got['rows'] if not row['check'].startswith('bf16')]
    assert all(row['ok'] is None for row in speed)                      # reduced shapes judge no speed goal ...
    parity, = [row for row in got['rows'] if row['check'].startswith('bf16')]
    assert parity['ok'] is True, parity                                 # ... but bf16 parity is judged everywhere
    assert '| check | measured |' in r.stdout                          # the table a GPU run puts in the README
