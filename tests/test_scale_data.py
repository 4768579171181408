"""The synthetic paper-scale dataset of benchmarks/scale_data.py (issue 14's rehearsal), at a small fraction: the
paper's proportions, the slice table's schema, embeddings the steps can read and that carry the organ flags, and the
same seed giving the same data."""
import sys
import numpy as np, pytest
from conftest import ROOT
sys.path.insert(0, str(ROOT/'benchmarks'))
import scale_data
from sail.slices import load_slices, slices_artifact, SLICE_COLUMNS
from sail.embed import load_embeddings, embeddings_artifact

FRACTION = 0.002

@pytest.fixture(scope='module')
def scale(smoke_run, tmp_path_factory):
    return scale_data.build(tmp_path_factory.mktemp('scale')/'data', smoke_run.data, FRACTION, (1024,), seed=1)

def test_scale_data_has_the_papers_proportions_and_schema(scale):
    assert scale.n_slices == round(scale_data.PAPER_SLICES * FRACTION)
    assert scale.n_scans == sum(max(1, round(n * FRACTION)) for n in scale_data.PAPER_SCANS.values())
    slices = load_slices(scale.data)
    assert list(slices.columns) == SLICE_COLUMNS and slices.slice_id.is_unique and len(slices) == scale.n_slices
    assert slices.groupby(['modality', 'image_id']).ngroups == scale.n_scans
    assert (slices.groupby(['modality', 'image_id', 'plane']).slice_index.apply(lambda s: s.tolist() == list(range(len(s))))).all()
    assert slices_artifact(scale.data).record()['inputs']['synthetic']['generator'] == scale_data.GENERATOR   # never passed off as sliced

def test_scale_embeddings_load_and_carry_the_organ_flags(scale):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    e = load_embeddings(scale.data, 'synth-1024', ['liver', 'plane'])
    assert e.X.shape == (scale.n_slices, 1024) and np.isfinite(e.X).all()
    y = e.slices.liver.to_numpy(bool); assert 0.05 < y.mean() < 0.95
    half = np.arange(len(y)) % 2 == 0
    p = LogisticRegression(max_iter=500).fit(e.X[half], y[half]).predict_proba(e.X[~half])[:, 1]
    assert roc_auc_score(y[~half], p) > 0.95                             # the organ's atom is there to be found

def test_same_seed_same_data(scale, tmp_path, smoke_run):
    again = scale_data.build(tmp_path/'again', smoke_run.data, FRACTION, (1024,), seed=1)
    for art in (slices_artifact, lambda d: embeddings_artifact(d, 'synth-1024')):
        a, b = art(scale.data).require()['files'], art(again.data).require()['files']
        assert {f: v[0] for f, v in a.items()} == {f: v[0] for f, v in b.items()}
