"The README's results table is the demo run's, rendered: never typed, and equal to the run's files."
import json
from pathlib import Path
import numpy as np, pandas as pd, pytest
from sail.core import project_root
from sail.config import load_config
from sail.docs import readme_block, results_copy, steps_copy, steps_markdown, STEPS_MARKERS
from sail.pipeline import read_manifest
from sail.figures import results_markdown, results_table, results_table_csv, RESULT_COLUMNS, encoder_weights

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
