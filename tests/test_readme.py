"The README's results table is the demo run's, rendered: never typed, and equal to the run's files."
import json
from pathlib import Path
import numpy as np, pandas as pd, pytest
from sail.core import project_root
from sail.config import load_config
from sail.docs import readme_block, results_copy, steps_copy, steps_markdown, STEPS_MARKERS
from sail.pipeline import read_manifest
from sail.figures import (results_markdown, results_table, results_table_csv, RESULT_COLUMNS, encoder_weights,
                          TrustTables, trust_markdown, trust_csv)
from sail.docs import trust_markers, trust_copy, read_trust

ROOT = project_root()

def test_readme_table_is_the_committed_run_table_rendered():
    copy = results_copy('demo')
    assert copy.exists(), f"{copy} missing: run `sail run demo` and `sail docs refresh`"
    table = pd.read_csv(copy)
    assert list(table.columns) == list(RESULT_COLUMNS) and len(table) >= 2
    assert readme_block((ROOT/'README.md').read_text()) == results_markdown(table)

def test_committed_table_equals_the_demo_run_when_present():
    run_csv = results_table_csv(load_config('demo').paths)
    if not run_csv.exists(): pytest.skip(f"no demo run here ({run_csv})")
    pd.testing.assert_frame_equal(pd.read_csv(run_csv), pd.read_csv(results_copy('demo')))

def test_results_table_reads_each_number_from_its_step_file(smoke_run):
    cfg = load_config(str(smoke_run.config))
    t = results_table(cfg.paths)
    res = smoke_run.run/'results'
    head = pd.read_csv(res/'headline.csv')
    assert list(zip(t.encoder, t.variant, t.config)) == list(zip(head.encoder, head.variant, head.selected_config))
    for r in t.itertuples():
        key = dict(encoder=r.encoder, variant=r.variant, config=r.config)
        pick = lambda df: df.loc[(df[list(key)] == pd.Series(key)).all(axis=1)]
        ret = pick(pd.read_csv(res/'retrieval'/'summary.csv'))
        assert r.retrieval_sparse_k5 == ret[(ret.method == 'sparse') & (ret.k == 5)].quality_mean.item()
        assert r.retrieval_dense == ret[ret.method == 'dense'].quality_mean.item()
        t3 = pick(pd.read_csv(res/'autointerp'/'table3.csv'))
        assert (r.judge_mean_rank, r.judge_success) == (t3.mean_rank.item(), t3.success_rate.item())
        lang = pick(pd.read_csv(res/'language'/'precision.csv')); lang = lang[lang.matcher == 'embedding']
        assert r.language_p10 == lang.p_all.item()
        rank = pick(pd.read_csv(res/'ranking.csv'))
        assert np.isclose(r.dense_val_auc, rank.dense_val_auc.item()) and np.isclose(r.M_top10, rank.M_top10_mean.item())
        assert r.weights == encoder_weights(r.encoder)
    assert len(t) == len(head) >= 2                                        # one row per encoder and variant

@pytest.mark.parametrize('name', TrustTables._fields)
def test_readme_evidence_tables_are_the_committed_run_tables_rendered(name):
    copy = trust_copy('demo', name)
    assert copy.exists(), f"{copy} missing: run `sail run demo` and `sail docs refresh`"
    assert readme_block((ROOT/'README.md').read_text(), trust_markers(name)) == trust_markdown(read_trust('demo'), name)

@pytest.mark.parametrize('name', TrustTables._fields)
def test_committed_evidence_tables_equal_the_demo_run_when_present(name):
    run_csv = trust_csv(load_config('demo').paths, name)
    if not run_csv.exists(): pytest.skip(f"no demo run here ({run_csv})")
    assert run_csv.read_bytes() == trust_copy('demo', name).read_bytes()

def test_readme_step_times_are_the_committed_run_records_rendered():
    copy = steps_copy('demo')
    assert copy.exists(), f"{copy} missing: run `sail run demo` and `sail docs refresh`"
    record = json.loads(copy.read_text())
    assert record['run'] == 'demo' and record['steps'] and all(e['status'] == 'done' for e in record['steps'].values())
    assert readme_block((ROOT/'README.md').read_text(), STEPS_MARKERS) == steps_markdown(record)

def test_committed_step_times_equal_the_demo_manifest_when_present():
    m = read_manifest(load_config('demo').paths)
    if not m['steps']: pytest.skip("no demo run here")
    record = json.loads(steps_copy('demo').read_text())
    assert record['updated'] == m['updated'] and {n: e['duration_s'] for n, e in record['steps'].items()} == {n: e.get('duration_s') for n, e in m['steps'].items()}

# --- issue 27: every number a benchmark measured is its stored JSON rendered; no measurement typed into the prose ---
import importlib, re, sys
import fastcore.test as fct                                            # (its test_eq is no pytest test)
sys.path.insert(0, str(ROOT/'benchmarks'))
import common

README_BENCHMARKS = ('bench_slicing', 'embed_throughput', 'embed_loading', 'sae_benchmarks', 'retrieval_benchmark',
                     'monosemanticity_benchmark', 'recovery_benchmark', 'query_speed', 'ray_executor',
                     'scale_rehearsal', 'grounding_benchmark', 'stability_benchmark', 'synthetic_ground_truth')   # the scripts whose blocks the README shows
LEGACY_MACHINE = {'ray_executor', 'scale_rehearsal'}   # measured before issue 27 (hours of runs): machine as a string

@pytest.mark.parametrize('name', README_BENCHMARKS)
def test_readme_benchmark_block_is_its_json_rendered(name):
    res = common.load(name)
    stamps = res['runs'] if name in LEGACY_MACHINE and 'commit' not in res else [res]   # the rehearsal: one per run
    assert 'machine' in res and all({'commit', 'when'} <= set(r) for r in stamps), \
        f"benchmarks/results/{name}.json: no machine, commit or date"
    if name not in LEGACY_MACHINE: assert {'cpus', 'cpu_model'} <= set(res['machine']), res['machine']
    render = importlib.import_module(name).render
    block = readme_block((ROOT/'README.md').read_text(), common.markers(name))
    assert block == render(res), f"rerun: python benchmarks/{name}.py --readme"

def test_every_generated_block_in_the_readme_is_checked():
    text = (ROOT/'README.md').read_text()
    written = re.findall(r'<!-- [\w-]+:start \(written by benchmarks/(\w+)\.py', text)
    assert sorted(written) == sorted(README_BENCHMARKS)
    blocks = re.findall(r'<!-- ([\w-]+):start', text)                   # the numbers in these are exempt below: each is
    fct.test_eq(sorted(blocks), sorted([common.markers(n)[0][5:].split(':')[0] for n in README_BENCHMARKS]
                                   + ['results-table', 'demo-steps']
                                   + [f'trust-{n}' for n in TrustTables._fields]))   # or `sail docs refresh`'s

def test_every_benchmark_script_publishes_its_results():
    helpers = {'common', 'scale_data', 'gpu_check'}   # the shared module, a data generator, the GPU check (own --out)
    for p in sorted((ROOT/'benchmarks').glob('*.py')):
        text = p.read_text()
        if p.stem in helpers: continue
        assert f"publish('{p.stem}'" in text and ('def render(' in text or 'render = ' in text), p

# What the README may say in numbers outside its generated blocks. Fenced and inline code (commands, file names, config
# literals), link targets and HTML comments are not prose; digits inside a name (DINOv3, ResNet-152, 2-D, L0, fp32,
# top-10, 1024²) are names. Every other number must be one of:
ALLOWED = [
    r'(?:§|Table |Tables |Fig\. |Figs\. |section |issue )\d',  # references to the paper, the spec, an issue
    r'\d+\.\d+\.\d+',                                          # versions (TotalSegmentator v2.0.1, nbdev 2.4.14)
    r'Python ≥ 3\.10',                                         # the supported Python
    r'\b\d{4}-\d\d-\d\d\b',                                    # dates
    r'909,873 slices|1,844 scans',                             # the paper's dataset (mission), not measured here
    r'[≤≥] ?\d[\d,.]*',                                        # a goal set by an issue, not a measurement
]
# A plain integer with no unit (22 queries, batch 2048, exit 130, 12 target groups) is a count or a setting of the code
# or configuration, checkable there. A measurement carries a unit of time, memory or rate, a percentage, a ratio, a
# decimal point or a thousands separator -- those are what must come from a file.
UNIT = r'(?:\s?(?:s|ms|min|h|B|KB|MB|GB|MiB|GiB|%|bytes|[\w-]+/s)\b|\s?%)'
NUMBER = re.compile(r'(?<![\w@/§.,²×-])(×|x(?=\d))?(\d[\d,.]*\d|\d)(?![\w²@-]|[.,]\d)(' + UNIT + ')?')

def prose(text:str)->str:
    "The README without generated blocks, code, link targets and comments (each replaced by a blank of the same lines)."
    text = re.sub(r'<!-- ([\w-]+):start.*?<!-- \1:end -->', lambda m: '\n' * m.group().count('\n'), text, flags=re.S)
    text = re.sub(r'```.*?```', lambda m: '\n' * m.group().count('\n'), text, flags=re.S)
    text = re.sub(r'<!--.*?-->', '', text, flags=re.S)
    return re.sub(r'`[^`\n]*`', '`…`', re.sub(r'\]\([^)\s]*\)', ']', text))

def typed_measurements(text:str)->list:
    "(line, number, text) of every measurement-shaped number outside generated blocks that no ALLOWED pattern covers."
    out = []
    for i, line in enumerate(prose(text).split('\n'), 1):
        allowed = [m.span() for a in ALLOWED for m in re.finditer(a, line)]
        for m in NUMBER.finditer(line):
            ratio, num, unit = m.groups()
            if not (ratio or unit or '.' in num or ',' in num): continue          # a plain count or setting
            if any(a <= m.start(2) < b for a, b in allowed): continue
            out.append((i, m.group().strip(), line.strip()[:100]))
    return out

def test_typed_measurement_finder():
    doc = ("Slicing took 43.8 s, ×46.9 faster, 96 % agree; 1,136 masks.\n"
           "<!-- x:start (written) -->\n| 12.9 s |\n<!-- x:end -->\n"
           "22 queries, batch 2048, `lr 1e-4`, DINOv3, ResNet-152, 1024², Table 2, v2.0.1, 2026-12-03, goal ≤ 60 s, "
           "Python ≥ 3.10.")
    fct.test_eq([n for _, n, _ in typed_measurements(doc)], ['43.8 s', '×46.9', '96 %', '1,136'])

def test_readme_has_no_measurement_outside_generated_blocks():
    found = typed_measurements((ROOT/'README.md').read_text())
    assert not found, "numbers typed into README.md outside generated blocks (move them into a benchmark's block):\n" \
                      + '\n'.join(f"  line {i}: {n!r} in {l!r}" for i, n, l in found)
