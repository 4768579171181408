"""The Ray executor (issue 15) on a local Ray cluster: the same outputs as a serial run, dead workers retried, data
failures recorded once, two SAE families per GPU at 0.5 GPU each.

One Ray cluster serves the module: 2 CPUs and 2 *logical* GPUs (`ray.init(num_gpus=2)`: scheduled like GPUs, the work
runs on the CPU). Its workers get `$SAIL_CRASH_AT`, so the first task to reach each listed point dies there
(`os._exit`, once per point; `sail.executor.crash_point`), deterministically, and Ray has to run it again."""
import json, os, sys, shutil
from pathlib import Path
import pytest
import pandas as pd

ray = pytest.importorskip('ray')
import ray.cloudpickle
from sail.config import ExecutorConfig, StageResources, DemoConfig, load_config
from sail.core import Failures, run_paths
from sail.demo import build_demo
from sail.executor import Task, run_stage, ray_session, stage_resources, ExecutorError
from sail.slices import slice_dataset, load_slices
from sail.split import split_dataset
from sail.embed import embed_encoder
from sail.train import train_grids
from sail.encoders import encoder_id
from conftest import ROOT, write_config, sail, kill_at

pytestmark = pytest.mark.xdist_group('ray')     # one Ray cluster per module: every test of it on one xdist worker

CRASH_POINTS = ('slices:rows-written', 'embed:shard-written', 'train:checkpoint')
ENCODERS = [dict(name='pixels', image_size=16), dict(name='random:dinov3', arch='tiny', image_size=32)]

@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    "A local Ray cluster (2 CPUs, 2 logical GPUs) whose workers crash once at each of CRASH_POINTS."
    if ray.is_initialized(): ray.shutdown()
    markers = tmp_path_factory.mktemp('crash-markers')
    saved = {k: os.environ.get(k) for k in ('SAIL_CRASH_AT', 'SAIL_CRASH_ONCE')}
    os.environ.update(SAIL_CRASH_AT=','.join(CRASH_POINTS), SAIL_CRASH_ONCE=str(markers))
    try: ray_session(ExecutorConfig(kind='ray', num_cpus=2, num_gpus=2, object_store_mb=150))
    finally:                                     # only the Ray workers have the crash points, never this process
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the tasks below live in this test module, not in sail
    yield markers
    ray.shutdown()

@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    "A small demo dataset (12 scans) with one scan whose image is not a NIfTI file (a data failure)."
    root = tmp_path_factory.mktemp('ray-demo')/'TotalSegmentator'
    build_demo(root, DemoConfig(ct_torso=6, mri_torso=4, ct_head=1, mri_head=1, voxel_mm=10.0, seed=3), workers=1)
    broken = sorted((root/'CT_Dataset_v201').glob('*/ct.nii.gz'))[1]
    broken.write_bytes(b'not a nifti file')
    return root, f"ct/{broken.parent.name}"

def write_run_config(folder:Path, root:Path, data:Path, name:str, executor:dict)->Path:
    "The configuration of these tests: the demo data, two encoders, the SAE grid with two variants, the given executor."
    return write_config(folder, name, data={'totalseg_root': str(root), 'dir': str(data)}, executor=executor, device='cpu',
                        split={'test_institutes': ['A', 'D', 'E']}, embed={'encoders': ENCODERS, 'batch_size': 32, 'shard_rows': 256},
                        sae={'variants': ['paper', 'released'], 'families': [[8, 32]], 'k_patterns': [[2, 4], [4, 8]], 'epochs': 2,
                             'batch_size': 128, 'lr': 1.0e-3})

def pipeline(config:Path)->dict:
    "Slices, split, embeddings of two encoders and the SAE grid (two variants), in this process, through the configured executor."
    cfg = load_config(config)
    sliced = slice_dataset(cfg.paths, cfg.data, cfg.slices, cfg.compute)
    split_dataset(cfg.paths.data, cfg.split)
    for ec in cfg.embed.encoders: embed_encoder(cfg.paths.data, cfg.embed, cfg.compute, ec)
    grid = train_grids(cfg.paths, cfg.sae, cfg.compute, [encoder_id(ec) for ec in cfg.embed.encoders], cfg.sae.variants)
    return dict(cfg=cfg, sliced=sliced, grid=grid)

@pytest.fixture(scope='module')
def serial(demo_data, tmp_path_factory):
    "The serial run every Ray run is compared with."
    root, _ = demo_data
    folder = tmp_path_factory.mktemp('serial')
    name = f'_pytest_ray_serial_{folder.parent.name}'
    yield pipeline(write_run_config(folder, root, folder/'data', name, {'kind': 'local'}))
    shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def outputs(cfg)->dict:
    """Every output of the three steps, by path relative to the data or run folder: file bytes, except that an artifact
    sidecar counts by the inputs it records (it also holds file times; the files themselves are compared here) and an
    SAE's config.json without its `saved` time."""
    rp, out = run_paths(cfg), {}
    for base, tag in ((rp.data, 'data'), (rp.run/'sae', 'sae')):
        for f in sorted(p for p in base.rglob('*') if p.is_file()):
            rel = f"{tag}/{f.relative_to(base)}"
            if f.suffix != '.json': out[rel] = f.read_bytes()
            else:
                j = json.loads(f.read_text())
                out[rel] = j['inputs'] if isinstance(j, dict) and 'digest' in j and 'files' in j else {k: v for k, v in j.items() if k != 'saved'} if isinstance(j, dict) else j
    return out

def test_serial_and_ray_runs_give_identical_outputs_with_dead_workers_retried(cluster, demo_data, serial, tmp_path, request):
    root, broken = demo_data
    name = f'_pytest_ray_ray_{tmp_path.name}'
    on_ray = pipeline(write_run_config(tmp_path, root, tmp_path/'data', name, {'kind': 'ray'}))
    request.addfinalizer(lambda: shutil.rmtree(ROOT/'runs'/name, ignore_errors=True))
    assert sorted(p.name for p in cluster.iterdir()) == sorted(c.replace(':', '_') for c in CRASH_POINTS)   # each worker died once
    a, b = outputs(serial['cfg']), outputs(on_ray['cfg'])
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == [], _first_difference(a, b)
    assert sum(1 for k in a if k.endswith('.png')) > 100 and sum(1 for k in a if k.endswith('model.safetensors')) == 8
    # the broken scan: recorded once, with the same reason, by both
    for run in (serial, on_ray):
        assert run['sliced'].n_failed == 1
        assert pd.read_csv(run_paths(run['cfg']).data/'slice_failures.csv').item.tolist() == [broken]
    assert (serial['sliced'].executor, on_ray['sliced'].executor) == ('local (serial)', 'ray (local, 2 CPUs, 2 GPUs)')
    # SAE families asked for half a logical GPU each (num_gpus: null on a cluster with GPUs)
    placed = on_ray['grid'].stage.placement
    assert len(placed) == 8 and all(len(p['gpus']) == 1 and p['gpus'][0] in ('0', '1') for p in placed.values())
    assert len(load_slices(run_paths(on_ray['cfg']).data, ['slice_id'])) == len(load_slices(run_paths(serial['cfg']).data, ['slice_id']))

def _attempt_then_fail(log:str, item:int):
    with open(log, 'a') as f: f.write(f"{item}\n")
    if item == 1: raise ValueError(f"scan {item}: voxel spacing is zero")
    return item

def test_a_data_failure_is_recorded_once_and_not_retried(cluster, tmp_path):
    log = tmp_path/'attempts.txt'
    failures = Failures()
    r = run_stage([Task(f"scan-{i}", _attempt_then_fail, (str(log), i)) for i in range(3)], 'slices', ExecutorConfig(kind='ray'), failures)
    assert r.values == {'scan-0': 0, 'scan-2': 2}
    assert failures.rows == [dict(item='scan-1', stage='slices', reason='ValueError: scan 1: voxel spacing is zero')]
    assert sorted(log.read_text().split()) == ['0', '1', '2']                 # each task ran once: the failing one too

def _wait_for_all(folder:str, me:int, n:int):
    "Start, then wait until all `n` tasks have started (a barrier: they must run at the same time), and say where I ran."
    from sail.executor import task_placement
    import time
    Path(folder, str(me)).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(folder).iterdir())) < n:
        if time.monotonic() > deadline: raise TimeoutError(f"only {len(list(Path(folder).iterdir()))} of {n} tasks started together")
        time.sleep(0.05)
    return task_placement()['gpus']

def test_two_sae_families_share_each_gpu_at_half_a_gpu_each(cluster, tmp_path):
    ex = ExecutorConfig(kind='ray', train=StageResources(num_cpus=0.5, num_gpus=0.5))
    assert stage_resources(ex, 'train') == dict(num_cpus=0.5, num_gpus=0.5, max_retries=3)
    r = run_stage([Task(f"family-{i}", _wait_for_all, (str(tmp_path), i, 4)) for i in range(4)], 'train', ex, Failures(strict=True))
    per_gpu = {}
    for gpus in r.values.values(): per_gpu[tuple(gpus)] = per_gpu.get(tuple(gpus), 0) + 1
    assert per_gpu == {('0',): 2, ('1',): 2}                                  # four at once: two on each of the two GPUs

def test_a_request_the_cluster_cannot_meet_is_an_error(cluster):
    with pytest.raises(ExecutorError, match=r"executor.embed.num_gpus = 3, but the Ray cluster has 2"):
        stage_resources(ExecutorConfig(kind='ray', embed=StageResources(num_gpus=3)), 'embed')


def _first_difference(a:dict, b:dict)->str:
    "The differing files, and for the first JSON one its differing keys (the assertion message)."
    bad = [k for k in a if a[k] != b[k]]
    j = next((k for k in bad if isinstance(a[k], dict)), None)
    keys = {} if j is None else {x: (a[j].get(x), b[j].get(x)) for x in set(a[j]) | set(b[j]) if a[j].get(x) != b[j].get(x)}
    return f"{bad}\n{j}: {keys}"

def test_sail_run_sends_its_steps_tasks_to_a_running_cluster(cluster, demo_data, serial, tmp_path):
    """`sail run` executes each step notebook in a kernel, where the step's functions are the kernel's own: the tasks
    must still reach the Ray workers as SAIL's functions, by name. The kernels join this module's cluster (`address`)."""
    root, _ = demo_data
    name = f'_pytest_ray_sailrun_{tmp_path.name}'
    config = write_run_config(tmp_path, root, tmp_path/'data', name, {'kind': 'ray', 'address': ray.get_runtime_context().gcs_address})
    try:
        r = sail('run', config, '--steps', 'slices', 'split', 'embed', 'train', timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        record = json.loads((run_paths(load_config(config)).steps/'08_train.json').read_text())
        assert record['summary']['executor'].startswith('ray (')
        a, b = outputs(serial['cfg']), outputs(load_config(config))
        assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == [], _first_difference(a, b)
    finally: shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def test_choosing_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    "Where the extra is not installed (simulated: the import system finds no `ray`), the error names the install command."
    import importlib.util, sail.executor
    real = importlib.util.find_spec
    monkeypatch.setattr(sail.executor.importlib.util, 'find_spec', lambda name, *a: None if name == 'ray' else real(name, *a))
    with pytest.raises(ExecutorError, match=r"executor.kind is 'ray' but Ray is not installed; install it with: pip install 'sail\[ray\]'"):
        run_stage([Task('x', 'os.path:join', ('a',))], 'slices', ExecutorConfig(kind='ray'), Failures())

def _cluster_idle(within:float=120.0):
    "Wait until every CPU of the cluster is free again (a dead driver's tasks are cancelled by Ray asynchronously)."
    import time
    deadline = time.monotonic() + within
    while ray.available_resources().get('CPU', 0) < ray.cluster_resources().get('CPU', 0):
        if time.monotonic() > deadline: pytest.fail(f"the cluster stayed busy: {ray.available_resources()} of {ray.cluster_resources()}")
        time.sleep(0.2)

def test_a_killed_driver_resumes_from_finished_artifacts(cluster, demo_data, serial, tmp_path):
    """The driver process itself is SIGKILLed at deterministic points -- after the 3rd scan and after the 2nd SAE family
    it got back from Ray -- and each rerun goes on from what was finished: the final outputs equal the serial run's."""
    root, broken = demo_data
    name = f'_pytest_ray_killed_{tmp_path.name}'
    config = write_run_config(tmp_path, root, tmp_path/'data', name, {'kind': 'ray', 'address': ray.get_runtime_context().gcs_address})
    driver = f"import sys; sys.path.insert(0, {str(ROOT/'tests')!r}); from test_ray_executor import pipeline; pipeline({str(config)!r})"
    cfg = load_config(config)
    try:
        kill_at(driver, 'slices:scan', 3)
        _cluster_idle()
        parts = list((run_paths(cfg).data/'.slices-parts').glob('*.json'))
        assert 2 <= len(parts) < 12 and not (run_paths(cfg).data/'slices.json').exists()     # killed mid-stage (3 done, one may be the broken scan)
        kill_at(driver, 'train:family', 2)
        _cluster_idle()
        assert len(list((run_paths(cfg).run/'sae').glob('*/*/*/artifact.json'))) >= 2        # at least the two families it got back
        resumed = pipeline(config)
        assert resumed['sliced'].sliced_now == [broken]        # the second driver finished slicing; a failed scan is always tried again
        a, b = outputs(serial['cfg']), outputs(resumed['cfg'])
        assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == [], _first_difference(a, b)
    finally: shutil.rmtree(ROOT/'runs'/name, ignore_errors=True)

def test_config_step_on_ray_equals_local(cluster):
    "A per-configuration step run as one Ray task per configuration writes what the local run writes, byte for byte."
    from sail.steps import lesson_run
    from sail.codes import write_codes, CODES
    from sail.monosemanticity import MONOSEMANTICITY, score_all
    from sail.config import Compute, EvalConfig
    local, remote = lesson_run(), lesson_run()
    write_codes(local.paths, local.cfg.sae)
    on_ray = Compute(device='cpu', executor=ExecutorConfig(kind='ray'))
    write_codes(remote.paths, remote.cfg.sae, on_ray)
    table = score_all(remote.paths, remote.cfg.eval, on_ray)
    assert table.equals(score_all(local.paths, local.cfg.eval))
    for step in (CODES, MONOSEMANTICITY):
        for ref_l, ref_r in zip(local.refs, remote.refs):
            a, b = step.folder(local.paths, ref_l), step.folder(remote.paths, ref_r)
            for name in step.files: assert (a/name).read_bytes() == (b/name).read_bytes(), (step.name, name)
