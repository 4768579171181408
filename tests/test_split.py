"Split invariants: no scan in two splits, held-out institutes only in test, same seed → same split.csv."
import json
import numpy as np, pandas as pd, pytest
from sail.split import make_split, check_split, split_dataset, strata
from sail.slices import slice_dataset

def _scans(n=200, seed=0, p_unknown=0.05):
    g = np.random.default_rng(seed)
    df = pd.DataFrame(dict(modality=g.choice(['ct', 'mri'], n, p=[0.65, 0.35]), image_id=[f's{i:04d}' for i in range(n)],
                           institute=g.choice(list('ABCDEFGHIJ'), n), gender=g.choice(['f', 'm'], n),
                           age=g.integers(18, 95, n).astype(float)))
    unk = g.random(n) < p_unknown
    df.loc[unk & (g.random(n) < 0.5), 'age'] = np.nan
    df.loc[unk, 'gender'] = np.where(df.loc[unk, 'age'].isna(), df.loc[unk, 'gender'], None)
    return df

@pytest.mark.parametrize('seed', [0, 1, 2])
def test_invariants(seed):
    scans = _scans(seed=seed)
    split, report = make_split(scans, ['A', 'D', 'E'], 0.2, seed=42)
    assert not split.duplicated(['modality', 'image_id']).any()
    m = split.merge(scans, on=['modality', 'image_id'], validate='one_to_one')
    assert len(m) == len(scans)
    assert set(m.institute[m.split == 'test']) == {'A', 'D', 'E'}
    assert (m.split[m.institute.isin(['A', 'D', 'E'])] == 'test').all()
    rest = m[m.split != 'test']
    assert abs((rest.split == 'val').mean() - 0.2) < 0.03
    for mod in ['ct', 'mri']:                                               # stratification keeps modality shares
        assert abs((rest[rest.modality == mod].split == 'val').mean() - 0.2) < 0.06

def test_same_seed_same_split_other_seed_differs():
    scans = _scans()
    a, _ = make_split(scans, seed=42); b, _ = make_split(scans.sample(frac=1, random_state=3), seed=42)
    pd.testing.assert_frame_equal(a, b)                                     # input order does not matter
    c, _ = make_split(scans, seed=7)
    assert (a.split != c.split).any()

def test_unknown_sex_or_age_are_split_80_20():
    scans = _scans(n=300, p_unknown=0.3)
    split, report = make_split(scans, [], 0.2)
    unknown = scans.gender.isna() | scans.age.isna()
    m = split.merge(scans[unknown], on=['modality', 'image_id'])
    assert report.n_unknown == unknown.sum() == len(m)
    assert (m.split == 'train').sum() == int(np.floor(0.8 * len(m)))

def test_tiny_strata_are_merged_not_a_crash():
    scans = pd.DataFrame(dict(modality=['ct', 'ct', 'mri', 'ct', 'mri'], image_id=list('abcde'), institute=list('BBCFG'),
                              gender=list('fmfmf'), age=[20., 50., 70., 90., 30.]))
    split, report = make_split(scans, ['A'], 0.2)
    assert set(split.split) <= {'train', 'val'} and report.strata_notes
    assert (split.split == 'val').sum() == 1

def test_existing_split_is_kept_and_remade_only_when_needed(mini, make_config, tmp_path):
    cfg = make_config(data={'totalseg_root': str(mini), 'dir': str(tmp_path/'out')})
    slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    split_dataset(cfg.paths.data, cfg.split)
    p = tmp_path/'out'/'split.csv'
    first, stamp = p.read_bytes(), p.stat().st_mtime_ns
    split_dataset(cfg.paths.data, cfg.split)
    assert p.stat().st_mtime_ns == stamp                                   # up to date: not rewritten
    p.write_text('\n'.join(p.read_text().splitlines()[:-1]) + '\n')      # a scan dropped by hand
    split_dataset(cfg.paths.data, cfg.split)
    assert p.read_bytes() == first                                          # the edited file is noticed and remade identically
    cfg.split.seed = 7
    split_dataset(cfg.paths.data, cfg.split)
    assert json.loads((tmp_path/'out'/'split.json').read_text())['inputs']['settings']['seed'] == 7

def test_split_file_missing_a_scan_is_an_error(mini, make_config, tmp_path):
    scans = pd.DataFrame(dict(modality=['ct', 'mri'], image_id=['s0000', 's0001']))
    with pytest.raises(ValueError, match=r"split.csv: 1 scan\(s\) of the slice table have no split"):
        check_split(pd.DataFrame(dict(modality=['ct'], image_id=['s0000'], split=['train'])), scans, 'split.csv')

def test_check_split_rejects_bad_values():
    scans = pd.DataFrame(dict(modality=['ct'], image_id=['s0']))
    with pytest.raises(ValueError, match="row 2 has split 'dev'"):
        check_split(pd.DataFrame(dict(modality=['ct'], image_id=['s0'], split=['dev'])), scans)

def test_small_random_datasets_never_crash():
    for seed in range(40):
        n = int(np.random.default_rng(seed).integers(2, 40))
        scans = _scans(n=n, seed=seed, p_unknown=0.2)
        split, _ = make_split(scans, ['A', 'D', 'E'], 0.2, seed=seed)
        assert len(split) == n and set(split.split) <= {'train', 'val', 'test'}

def test_split_of_names_missing_scans(tmp_path):
    from sail.split import split_of, split_artifact
    pd.DataFrame(dict(modality=['ct'], image_id=['s0'], split=['val'])).to_csv(tmp_path/'split.csv', index=False)
    split_artifact(tmp_path).commit({})
    rows = pd.DataFrame(dict(modality=['ct', 'ct', 'mri'], image_id=['s0', 's0', 's0']))
    with pytest.raises(ValueError, match=r"split.csv: no split for 1 slices \(e.g. scan s0\)"):
        split_of(rows, tmp_path)
    assert split_of(rows[:2], tmp_path).tolist() == ['val', 'val']
