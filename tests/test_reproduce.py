"""reproduce.py --scale=smoke: every table and figure is written with the expected structure.
(This checks the pipeline, not the scientific outcome.)"""
import csv, json, os, shutil, signal, subprocess, sys, time
import pytest
import torch
import reproduce
from train_mdlm import diffusion_loss
from utils import load_checkpoint


def test_smoke_reproduction_writes_every_file(tmp_path):
    # in-process through main(argv), as the command line runs it (a subprocess costs 5 s of imports)
    out = tmp_path / 'results'
    reproduce.main(['--scale=smoke', '--seeds=0,1', f'--out={out}'])
    rows = list(csv.DictReader(open(out / 'models.csv')))
    models = ('MDM', 'SIDM', 'SCDM', 'AR', 'AR+MTP', 'AR-NTP', 'AR+MTP causal prefix', 'AR+MTP W=2')
    assert {(r['model'], r['seed']) for r in rows} == {(m, s) for m in models for s in '01'}
    assert {(r['model'], r['decoding']) for r in rows if r['finding'] == 'C1'} == \
        {(m, o) for m in ('MDM', 'SIDM', 'SCDM') for o in ('random', 'top_prob')}
    assert {r['task'] for r in rows} == {'sudoku4', 'path_star'}
    assert all(0 <= float(r['accuracy']) <= 1 and int(r['n']) == 32 for r in rows)
    for seed in '01':
        sweep = list(csv.DictReader(open(out / f'sweep_latent_seed{seed}.csv')))
        assert [(r['order'], r['k']) for r in sweep] == [(o, k) for o in ('random', 'top_prob')
                                                         for k in ('0', '1', 'all', 'full', 'independent')]
        assert set(sweep[0]) == {'order', 'k', 'accuracy', 'nfe_per_sample', 'positions_per_sample', 'seconds_per_sample'}
        assert float(sweep[0]['positions_per_sample']) < float(sweep[2]['positions_per_sample'])  # k costs
    summary = json.load(open(out / 'summary.json'))
    assert len(summary['models']['MDM (random)']['per_seed']) == 2 and 'hardware' in summary
    assert summary['wall_clock_minutes'] > 0 and len(summary['dial']) == 10
    assert (out / 'dial.png').stat().st_size > 1000
    table = (out / 'table.md').read_text()
    assert '| MDM | random |' in table and '| top_prob | all |' in table and 'SIDM (reference)' in table
    # --table redraws the table and the figure from summary.json alone, as the run wrote them
    (out / 'table.md').unlink(); (out / 'dial.png').unlink()
    reproduce.main(['--table', f'--out={out}'])
    assert (out / 'table.md').read_text() == table and (out / 'dial.png').stat().st_size > 1000
    assert all(len(line) <= 100 for line in table.splitlines() if not line.startswith('|'))
    # --probe_window on an AR+MTP checkpoint of the run: one row per (cut, position in its window)
    ckpt = out / 'ckpt' / 'AR+MTP_seed0' / 'ckpt.pt'
    assert not load_checkpoint(str(ckpt))[0].training          # loaded for inference: no dropout
    reproduce.main(['--probe_window', f'--ckpt={ckpt}', '--n=8'])
    probe = list(csv.DictReader(open(ckpt.parent / 'probe_window.csv')))
    assert len(probe) > 0 and all(int(p['position']) >= int(p['cut']) and 0 <= float(p['accuracy']) <= 1 for p in probe)
    assert {int(p['cut']) for p in probe} == set(range(max(int(p['position']) for p in probe) + 1))


def test_every_scale_builds_valid_settings():
    """The gpu scales cannot be run in CI; at least their settings must be valid TrainConfigs and
    tasks, so that a typo does not surface after an hour on a GPU."""
    from reproduce import SCALES, scale_ar_models, scale_models, scale_settings
    from tasks import get_task
    from train_ar_mtp import ARConfig, objective
    from train_mdlm import TrainConfig, check_settings
    for scale in SCALES.values():
        models = scale_models(scale, 0, 'out', 'cpu')
        for c in models.values():                      # every model as trained, steps included
            check_settings(c)
        assert all(models[name].max_iters == steps for name, steps in scale.get('longer', {}).items())
        with pytest.raises(ValueError, match='longer names no diffusion model'):
            scale_models(dict(scale, longer={'SDCM': 10}), 0, 'out', 'cpu')
        if scale['diffusion'] is not None:                                             # None: C3 only
            cfg = TrainConfig(**{'task': 'sudoku', **scale_settings(scale['diffusion'])})   # unknown key: TypeError
            get_task(cfg.task, **cfg.task_options)                                     # wrong option: ValueError
        for kw in scale_ar_models(scale).values():            # exactly the C3 models it trains; unknown name: KeyError
            cfg = ARConfig(**{**scale_settings(scale['ar']), **kw})
            get_task(cfg.task, **cfg.task_options)
            objective(cfg)


def test_cache_benchmark_of_a_latent_checkpoint(trained_semi_causal):
    from reproduce import bench_cache
    model, ckpt = load_checkpoint(f'{trained_semi_causal}/out/ckpt.pt')
    results = bench_cache(model, ckpt, *reproduce.checkpoint_examples(ckpt, 'test', 16), 'cpu', refreshes=(0, 1, 4),
                          doubts=(1.0,), rounds=1)
    assert list(results) == ['k=all r=0', 'k=all r=1', 'k=all r=4', 'k=0 r=0', 'k=0 r=1', 'k=0 r=4',
                             'k=all r=never below=1.0', 'k=0 r=never below=1.0']
    for k in ('all', '0'):     # r=1 and refresh on doubt at tau=1 are the uncached sampler; r=4 runs fewer positions
        for same in (f'k={k} r=1', f'k={k} r=never below=1.0'):
            assert results[same]['accuracy'] == results[f'k={k} r=0']['accuracy']
            assert (results[same]['lost'], results[same]['won']) == (0, 0)   # the same puzzles, too
        assert 'difference' not in results[f'k={k} r=0']                                 # its own baseline
        assert results[f'k={k} r=4']['positions_per_sample'] < results[f'k={k} r=0']['positions_per_sample']


def test_a_job_whose_files_cannot_be_written_is_refused_before_it_decodes(trained_semi_causal, tmp_path,
                                                                         monkeypatch, read_only_disk):
    """A job on --ckpt writes beside the checkpoint: a folder that takes no file (read-only; as root,
    whom permission bits never stop, a disk that refuses) is an error before any decoding. Was: the
    sweep ran, then a traceback at its first file."""
    shutil.copy(f'{trained_semi_causal}/out/ckpt.pt', tmp_path / 'ckpt.pt')
    decoded = []
    monkeypatch.setattr(reproduce, 'sweep_threshold', lambda *a: decoded.append(1))
    with pytest.raises(SystemExit, match="--ckpt's folder .* cannot hold this job's files, which go beside the "
                                         'checkpoint: .* is not writable \\(Read-only file system\\)'):
        reproduce.main(['--sweep_threshold=0,0.6', f'--ckpt={tmp_path}/ckpt.pt', '--n=8'])
    assert not decoded and sorted(p.name for p in tmp_path.iterdir()) == ['ckpt.pt']


def test_the_jobs_on_a_checkpoint_read_puzzles_from_a_file(trained_semi_causal, tmp_path):
    """--input: a job on --ckpt runs on the first n puzzles of a file instead of the test split, and
    names what it writes after the file: the test split's puzzles written to a file (no answers, '0'
    blanks) give the test split's rows (and 16 of them would not). The jobs that compare guesses
    with the answer refuse a file without a right answer on every line."""
    import shutil
    shutil.copy(f'{trained_semi_causal}/out/ckpt.pt', tmp_path / 'ckpt.pt')
    ckpt = str(tmp_path / 'ckpt.pt')
    model, saved = load_checkpoint(ckpt)
    task, examples = reproduce.checkpoint_examples(saved, 'test', 24)
    mine = tmp_path / 'mine.txt'
    mine.write_text(''.join(p.replace('.', '0') + '\n' for p, _ in examples[:8]))     # fewer than --n: all 8
    reproduce.main(['--sweep_threshold=0,0.6', f'--ckpt={ckpt}', '--n=8'])
    reproduce.main(['--sweep_threshold=0,0.6', f'--ckpt={ckpt}', '--n=16', f'--input={mine}'])
    cost = lambda name: [(r['threshold'], r['accuracy'], r['nfe_per_sample'], r['positions_per_sample'])
                         for r in csv.DictReader(open(tmp_path / name))]
    assert cost('sweep_threshold_mine.csv') == cost('sweep_threshold.csv')
    reproduce.main(['--sweep_threshold=0,0.6', f'--ckpt={ckpt}', '--n=16'])
    assert cost('sweep_threshold_mine.csv') != cost('sweep_threshold.csv')
    assert (tmp_path / 'sweep_threshold_mine.png').exists()
    # the dial through main: a row per commit order and k, each the latent sampler's own figure
    reproduce.main(['--sweep_latent=0,all', f'--ckpt={ckpt}', f'--input={mine}'])
    dial = list(csv.DictReader(open(tmp_path / 'sweep_latent_mine.csv')))
    assert [(r['order'], r['k']) for r in dial] == [(o, k) for o in reproduce.ORDERS for k in ('0', 'all')]
    for r in dial:
        n_latent = 'all' if r['k'] == 'all' else int(r['k'])
        decoder = dict(reproduce.DECODERS['latent'][1], method='latent', n_latent=n_latent,
                       **reproduce.ORDERS[r['order']])
        got = reproduce.evaluate(model, task, examples[:8], saved['attn'], decoder)
        assert (float(r['accuracy']), float(r['positions_per_sample'])) == (got['accuracy'], got['positions_per_sample'])
    assert json.load(open(tmp_path / 'sweep_latent_mine.json'))['n'] == 8
    assert (tmp_path / 'sweep_latent_mine.png').exists()
    wrong = tmp_path / 'wrong.txt'                  # a right answer on every line but the last
    wrong.write_text(''.join(f'{p},{a}\n' for p, a in examples[:-1]) + f'{examples[-1][0]},{examples[-2][1]}\n')
    for job in ('--calibration=0.9', '--probe_window'):
        for path in (mine, wrong):
            with pytest.raises(SystemExit, match='must give its puzzle and a right answer'):
                reproduce.main([job, f'--ckpt={ckpt}', f'--input={path}'])


def test_cache_benchmark_of_an_mdm_checkpoint(tmp_path):
    """(It crashed before MDM decoding had a cache: the AR rows' use_cache went to decode_mdm.)"""
    from reproduce import bench_cache
    from train_mdlm import settings, train
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={tmp_path}/out', f'--data_dir={tmp_path}/data',
                       '--attn=full', '--max_iters=20', '--eval_interval=20', '--eval_n=8'])
    model, ckpt = load_checkpoint(train(cfg, quiet=True)[1])
    results = bench_cache(model, ckpt, *reproduce.checkpoint_examples(ckpt, 'test', 16), 'cpu', refreshes=(0, 1, 4),
                          rounds=1)
    assert list(results) == ['r=0', 'r=1', 'r=4']
    assert results['r=1']['accuracy'] == results['r=0']['accuracy']
    assert results['r=1']['positions_per_sample'] == results['r=0']['positions_per_sample']
    assert (results['r=1']['lost'], results['r=1']['won']) == (0, 0)      # compared with r=0, puzzle by puzzle
    assert results['r=4']['positions_per_sample'] < results['r=0']['positions_per_sample']


def test_ctrl_c_in_a_run_says_the_same_command_continues_it(tmp_path, monkeypatch):
    """Ctrl-C while reproduce.py trains a model: train() saves a checkpoint and stops; the message
    names the rerun (which continues every checkpoint it finds), not train's --resume, which
    reproduce.py does not take."""
    monkeypatch.chdir(tmp_path)
    train, steps = reproduce.train, []
    def loss_with_ctrl_c(model, *args):
        steps.append(1)
        if len(steps) == 3: signal.raise_signal(signal.SIGINT)
        return diffusion_loss(model, *args)
    monkeypatch.setattr(reproduce, 'train', lambda c, *a, **k: train(c, loss_with_ctrl_c, **k))
    with pytest.raises(SystemExit, match=r'stopped by Ctrl-C after step 3 of 20: out/ckpt/MDM_seed0/ckpt.pt holds it; '
                                         'the same reproduce.py command continues exactly'):
        reproduce.main(['--scale=smoke', '--seeds=0', '--out=out'])
    assert load_checkpoint('out/ckpt/MDM_seed0/ckpt.pt')[1]['step'] == 3


def test_a_scale_without_diffusion_models_runs_c3_only_and_keeps_finished_seeds(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.SCALES, 'c3_only', dict(reproduce.SCALES['smoke'], diffusion=None, ar_models='AR',
                                                         windows='', n_test=8))
    monkeypatch.chdir(tmp_path)
    evaluate, calls = reproduce.evaluate, []

    def evaluate_then_die(*args, **kw):           # the run is killed while evaluating seed 1
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return evaluate(*args, **kw)
    monkeypatch.setattr(reproduce, 'evaluate', evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(['--scale=c3_only', '--seeds=0,1'])   # no --out: results/<scale>, never results/ itself
    out = tmp_path / 'results' / 'c3_only'
    assert not (tmp_path / 'results' / 'models.csv').exists()
    rows = list(csv.DictReader(open(out / 'models.csv')))
    assert [(r['finding'], r['model'], r['seed']) for r in rows] == [('C3', 'AR', '0')]
    summary = json.load(open(out / 'summary.json'))               # the finished seed is kept
    assert summary['seeds'] == '0' and summary['models']['AR (left_to_right)']['per_seed'] == [float(rows[0]['accuracy'])]
    assert summary['dial'] == [] and '| AR | left_to_right |' in (out / 'table.md').read_text()
    shutil.rmtree(out / 'ckpt' / 'AR_seed1')                        # seed 1 trained before the kill: start it over
    monkeypatch.setattr(reproduce, 'evaluate', evaluate)            # rerun: seed 0's model is only evaluated
    reproduce.main(['--scale=c3_only', '--seeds=0,1'])
    summary = json.load(open(out / 'summary.json'))
    assert summary['seeds'] == '0,1' and summary['resumed_checkpoints'] == ['AR seed 0']
    assert len(summary['training_minutes_per_seed']['AR']) == 1       # only seed 1 trained in this run
    assert summary['models']['AR (left_to_right)']['per_seed'][0] == float(rows[0]['accuracy'])
    assert 'earlier run left in the folder' in (out / 'table.md').read_text()
    # a checkpoint trained with other settings is refused, never continued or evaluated as if new
    changed = dict(reproduce.SCALES['c3_only'], ar=dict(reproduce.SCALES['c3_only']['ar'], learning_rate=1e-4))
    monkeypatch.setitem(reproduce.SCALES, 'c3_only', changed)
    before = (out / 'ckpt' / 'AR_seed0' / 'ckpt.pt').read_bytes()
    with pytest.raises(SystemExit, match=r'AR_seed0/ckpt.pt was trained with other settings \(learning_rate: 0.003 -> 0.0001\)'):
        reproduce.main(['--scale=c3_only', '--seeds=0'])
    assert (out / 'ckpt' / 'AR_seed0' / 'ckpt.pt').read_bytes() == before


def test_models_trained_side_by_side_are_the_models_a_run_of_one_at_a_time_trains(tmp_path, monkeypatch, capsys):
    """--processes=2: each model is trained in a worker process with the settings, data and seed
    of a run that trains one model at a time, and the run then only evaluates it. Both runs use
    one thread a model here: PyTorch's CPU matrix products may sum in an order that depends on
    the thread count, and only with the same count are the numbers the same bit for bit."""
    monkeypatch.setitem(reproduce.SCALES, 'tiny', dict(reproduce.SCALES['smoke'], ar_models='AR', windows='',
                                                      n_test=8, ks='0,all'))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reproduce.main(['--scale=tiny', '--seeds=0', '--out=one'])
        shutil.copytree('one/ckpt/MDM_seed0', 'two/ckpt/MDM_seed0')   # a finished model: only evaluated
        trained_here, train = [], reproduce.train
        monkeypatch.setattr(reproduce, 'train', lambda c, *a, **k: trained_here.append(c.attn) or train(c, *a, **k))
        reproduce.main(['--scale=tiny', '--seeds=0', '--out=two', '--processes=2'])
    finally:
        torch.set_num_threads(threads)
    assert trained_here == []                      # all in the workers (the finished MDM only loaded there)
    assert (tmp_path / 'one' / 'models.csv').read_text() == (tmp_path / 'two' / 'models.csv').read_text()
    for name in ('MDM', 'SIDM', 'SCDM', 'AR'):
        one, two = (load_checkpoint(f'{tmp_path}/{out}/ckpt/{name}_seed0/ckpt.pt')[0].state_dict() for out in ('one', 'two'))
        assert all(torch.equal(one[k], two[k]) for k in one), name
    summary = json.load(open(tmp_path / 'two' / 'summary.json'))
    assert summary['processes'] == 2 and summary['resumed_checkpoints'] == ['MDM seed 0']
    assert set(summary['training_minutes_per_seed']) == {'SIDM', 'SCDM', 'AR'}
    assert 0 < summary['side_by_side_minutes'] <= summary['wall_clock_minutes']
    assert 'Trained 2 models at a time first' in (tmp_path / 'two' / 'table.md').read_text()
    # a model that fails in its worker stops the run with the worker's own error, after saying why it waits
    (tmp_path / 'three' / 'ckpt').mkdir(parents=True)
    (tmp_path / 'three' / 'ckpt' / 'AR_seed0').write_text('a file where a checkpoint folder goes')
    with pytest.raises(SystemExit, match='AR_seed0.* cannot hold checkpoints'):
        reproduce.main(['--scale=tiny', '--seeds=0', '--out=three', '--processes=2'])
    assert 'AR seed 0 failed: waiting for the 1 other model(s) in training to end' in capsys.readouterr().err


def test_processes_are_refused_off_a_cpu_before_any_work(tmp_path, monkeypatch):
    """Several processes share out a CPU's cores; on a GPU they would only queue for one card."""
    monkeypatch.setattr(reproduce, 'pick_device', lambda device: 'cuda')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="--processes shares out a CPU's cores; on cuda train one model at a time"):
        reproduce.main(['--scale=smoke', '--processes=2'])
    assert not list(tmp_path.iterdir())


def test_a_scale_without_ar_models_runs_c1_and_c2_only_with_longer_steps(tmp_path, monkeypatch):
    """Like the c2_long scale: diffusion models only (ar_models=''), SCDM and SIDM trained
    longer than MDM."""
    monkeypatch.setitem(reproduce.SCALES, 'c2_only', dict(reproduce.SCALES['smoke'], ar=None, ar_models='', windows='',
                                                         longer=dict(SIDM=30, SCDM=30), n_test=8, ks='0,all'))
    monkeypatch.chdir(tmp_path)
    reproduce.main(['--scale=c2_only', '--seeds=0'])
    out = tmp_path / 'results' / 'c2_only'
    rows = list(csv.DictReader(open(out / 'models.csv')))
    assert {r['finding'] for r in rows} == {'C1'} and {r['model'] for r in rows} == {'MDM', 'SIDM', 'SCDM'}
    steps = {name: load_checkpoint(str(out / 'ckpt' / f'{name}_seed0' / 'ckpt.pt'))[1]['train_config']['max_iters']
             for name in ('MDM', 'SIDM', 'SCDM')}
    assert steps == dict(MDM=20, SIDM=30, SCDM=30)
    table = (out / 'table.md').read_text()
    assert 'C2 random, k=all minus MDM' in table and 'C3' not in table


def test_target_checks_fail_a_target_missed_on_one_seed():
    """Targets are checked on every seed: one seed below the line fails it, and a drop in the
    dial is forgiven only within its binomial interval."""
    from reproduce import target_checks
    dial = lambda order, accs: [dict(order=order, k=k, per_seed=a) for k, a in accs.items()]
    s = dict(scale='cpu', n_test=300, wall_clock_minutes=59.0, models={
        'MDM (random)': dict(per_seed=[0.50, 0.50]), 'SIDM (random)': dict(per_seed=[0.05, 0.35]),
        'AR (left_to_right)': dict(per_seed=[0.10, 0.10]), 'AR+MTP (left_to_right)': dict(per_seed=[0.25, 0.20])},
        dial=dial('random', {'0': [0.06, 0.10], '4': [0.03, 0.30], 'all': [0.45, 0.50],
                             'full': [0.50, 0.50], 'independent': [0.05, 0.35]}))
    lines = dict(line.split(': ', 1) for line in target_checks(s))
    assert lines['- C1, MDM minus SIDM in random order, at least +20'] == '**not met** (+45.0 / +15.0)'
    assert lines['- C2 random, k=0 minus SIDM, within 5'] == '**not met** (+1.0 / -25.0)'
    assert lines['- C2 random, k=all minus MDM, within 10'] == 'met (-5.0 / +0.0)'
    # a 3-point drop on 300 puzzles is inside the interval (about 4 points); nothing drops on seed 1
    assert lines['- C2 random, non-decreasing in k (worst step up in k, plus its 95% interval, at least 0)'] \
        .startswith('met')
    assert lines['- C3, AR+MTP minus AR, at least +10'] == 'met (+15.0 / +10.0)'
    assert lines['- Time, at most 60 minutes'] == 'met (59 minutes)'
    timed_in_part = dict(s, resumed_checkpoints=['MDM seed 0'])   # a run that continued models is not timed
    assert dict(line.split(': ', 1) for line in target_checks(timed_in_part))['- Time, at most 60 minutes'] \
        .startswith('not measured')
    assert not any('path-star' in l for l in target_checks(s))           # a Sudoku C3: no path-star checks
    s['settings'] = dict(ar=dict(task='path_star', task_options=dict(degree=2)))
    lines = dict(line.split(': ', 1) for line in target_checks(s))
    assert lines['- C3 path-star, AR minus 1/degree = 50% (the Clever-Hans failure), within 10'] == \
        '**not met** (-40.0 / -40.0)'
    s['models']['AR (left_to_right)']['per_seed'] = [0.45, 0.55]
    s['models']['AR+MTP (left_to_right)']['per_seed'] = [0.95, 0.50]
    lines = dict(line.split(': ', 1) for line in target_checks(s))
    assert lines['- C3 path-star, AR minus 1/degree = 50% (the Clever-Hans failure), within 10'] == 'met (-5.0 / +5.0)'
    assert lines['- C3 path-star, AR+MTP minus 75% (halfway from 1/degree to every graph), at least 0'] == \
        '**not met** (+20.0 / -25.0)'
    s['dial'][1]['per_seed'] = [0.00, 0.30]                     # a 6-point drop is not
    assert '**not met**' in [l for l in target_checks(s) if 'non-decreasing' in l][0]
    # at the line a target is met, just past it not (on the seed past it)
    s['models']['MDM (random)']['per_seed'], s['models']['SIDM (random)']['per_seed'] = [0.50, 0.60], [0.30, 0.403]
    s['dial'] = dial('random', {'0': [0.25, 0.453], 'all': [0.40, 0.497], 'full': [0.50, 0.60],
                                'independent': [0.30, 0.403]})
    lines = dict(line.split(': ', 1) for line in target_checks(s))
    assert lines['- C1, MDM minus SIDM in random order, at least +20'] == '**not met** (+20.0 / +19.7)'
    assert lines['- C2 random, k=0 minus SIDM, within 5'] == 'met (-5.0 / +5.0)'
    assert lines['- C2 random, k=all minus MDM, within 10'] == '**not met** (-10.0 / -10.3)'


def test_spread_puts_the_seeds_of_several_runs_side_by_side(tmp_path, monkeypatch):
    """--spread: one column a seed over several runs of one recipe, a missed target in bold, and
    a count of the seeds that meet each target and every target; runs of other settings, a seed
    given twice and a folder without a summary are errors."""
    def run(folder, seeds, mdm, sidm, settings='cpu recipe', dial=()):
        (tmp_path / folder).mkdir()
        s = dict(scale='cpu', seeds=seeds, n_test=300, wall_clock_minutes=50.0, hardware='a CPU', settings=settings,
                 models={'MDM (random)': dict(per_seed=mdm), 'SIDM (random)': dict(per_seed=sidm)}, dial=list(dial))
        json.dump(s, open(tmp_path / folder / 'summary.json', 'w'))
    run('a', '0,1', [0.50, 0.40], [0.10, 0.30])
    run('b', '2', [0.60], [0.20])
    monkeypatch.chdir(tmp_path)
    table = reproduce.seed_spread(['a', 'b']).splitlines()
    assert table[2] == '| target | seed 0 | seed 1 | seed 2 | met on |'
    assert table[4] == '| C1, MDM minus SIDM in random order, at least +20 | +40.0 | **+10.0** | +40.0 | 2 of 3 |'
    assert table[5] == '| every target | met | **not met** | met | 2 of 3 |' and len(table) == 6     # no dial
    # with a dial: each end and its reference, mean +- standard deviation over the seeds of both runs
    dial = lambda accs: [dict(order='random', k=k, per_seed=a) for k, a in accs.items()]
    run('d', '3,4', [0.5, 0.5], [0.1, 0.1], dial=dial({'0': [0.1, 0.1], 'all': [0.4, 0.5], 'full': [0.5, 0.5],
                                                        'independent': [0.1, 0.1]}))
    run('e', '5', [0.8], [0.4], dial=dial({'0': [0.4], 'all': [0.6], 'full': [0.8], 'independent': [0.4]}))
    table = reproduce.seed_spread(['d', 'e']).splitlines()
    # seed 5 meets C1 but misses k = all against MDM (-20): not every target
    assert '| every target | met | met | **not met** | 2 of 3 |' in table
    assert table[-2:] == ['|---|---|---|---|---|', '| random | 60.0 +- 17.3 | 50.0 +- 10.0 | 20.0 +- 17.3 | 20.0 +- 17.3 |']
    run('c', '3', [0.5], [0.1], settings='another recipe')
    with pytest.raises(SystemExit, match='c ran another than a'):
        reproduce.main(['--spread=a,c'])
    with pytest.raises(SystemExit, match='given a seed twice'):
        reproduce.main(['--spread=a,a'])
    with pytest.raises(SystemExit, match='f/summary.json does not exist'):
        reproduce.main(['--spread=a,f'])
    with pytest.raises(SystemExit, match='--spread does not use --out'):
        reproduce.main(['--spread=a,b', '--out=a'])


def test_calibration_follows_threshold_decoding_exactly(tmp_path, trained_semi_causal):
    """--calibration decodes on the path threshold decoding takes while it is right: it finds the
    decoder's own accuracy, puzzle for puzzle, and commits every blank cell once."""
    from reproduce import calibration
    from sample import evaluate
    from train_mdlm import settings, train
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={tmp_path}/out', f'--data_dir={tmp_path}/data',
                       '--attn=full', '--max_iters=150', '--eval_interval=150', '--eval_n=8'])
    model, ckpt = load_checkpoint(train(cfg, quiet=True)[1])
    task, examples = reproduce.checkpoint_examples(ckpt, 'test', 64)
    blanks = sum(p.count('.') for p, _ in examples)
    rows, summary = calibration(model, ckpt, [0.0, 0.6], task, examples, str(tmp_path / 'calibration.csv'), 'cpu',
                                batch_size=24)
    for tau in (0.0, 0.6):
        solved = evaluate(model, task, examples, ckpt['attn'], dict(ckpt['decoder'], threshold=tau))['accuracy']
        assert summary[tau]['solved'] == solved and 0 < solved < 1                     # a model that fails sometimes
        assert sum(r['cells'] for r in rows if r['threshold'] == tau) == blanks        # each blank committed once
        assert summary[tau]['wrong'] > 0 and 0 < summary[tau]['predicted'] < 1
    assert all(0 <= r['right'] <= 1 and r['confidence_from'] <= r['mean_confidence'] <= r['confidence_to'] for r in rows)
    assert len(list(csv.DictReader(open(tmp_path / 'calibration.csv')))) == len(rows)
    assert (tmp_path / 'calibration.png').stat().st_size > 1000
    with pytest.raises(SystemExit, match='needs an MDM or SIDM Sudoku checkpoint'):
        calibration(*load_checkpoint(f'{trained_semi_causal}/out/ckpt.pt'), [0.9], task, examples, str(tmp_path / 'c.csv'),
                    'cpu')


def test_wrap_prose_wraps_prose_only_and_never_opens_a_markdown_block():
    """table.md's prose is wrapped at 100 characters like the hand-written files; a wrapped line
    that began with '- ', '1. ' or '#' would render as a new list item or heading."""
    import re
    long = 'Minutes per seed: ' + ' '.join(f'{i}.5' for i in range(40))
    risky = ['w ' * 50 + '- b', 'w ' * 50 + '1. d']    # plain wrapping would start lines with '- ', '1. '
    table = '| a | b |' * 20
    item = '- C2 random, k=0 minus SIDM, within 5: ' + ' / '.join(['+2.8'] * 30)
    out = reproduce.wrap_prose([long, '', table, *risky, item])
    words = lambda lines: ' '.join(lines).split()
    assert words(out) == words([long, table, *risky, item])              # nothing lost or reordered
    assert '' in out and out[out.index('') + 1] == table                # blank lines and tables kept
    prose = [line for line in out if line and line != table]
    assert len(prose) >= 6 and all(len(line) <= 100 + 3 for line in prose)   # + a marker kept on its line
    opens_block = [line for line in prose if re.match(r'\s*(([-+*]|\d+[.)]) |#)', line)]
    assert opens_block == [line for line in prose if line.startswith('- C2')]  # only the item itself
    after_item = prose[prose.index(opens_block[0]) + 1:]
    assert after_item and all(line.startswith('  ') for line in after_item)  # the item's lines under it


@pytest.mark.slow      # real processes and a real Ctrl-C: about 20 s
def test_ctrl_c_under_processes_saves_the_models_in_training_and_starts_no_other(tmp_path):
    """Ctrl-C in a terminal reaches the run and its training processes: the two models in
    training save a checkpoint and stop, the others do not start, and the run ends with a message
    that says which is which. Was: the pool started the next models and the run went on."""
    out, long = tmp_path / 'out', f"dict(reproduce.SMOKE, data_dir='{tmp_path}/data', max_iters=100000, eval_interval=5)"
    script = ('import reproduce\n'
              f"reproduce.SCALES['long'] = dict(reproduce.SCALES['smoke'], diffusion={long}, ar_models='AR', windows='')\n"
              f"reproduce.main(['--scale=long', '--seeds=0', '--out={out}', '--processes=2'])\n")
    run = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True,        # its own group, as a terminal's job is
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = [out / 'ckpt' / f'{name}_seed0' / 'ckpt.pt' for name in ('MDM', 'SIDM')]   # the longest first
        deadline = time.time() + 120
        while not all(p.exists() for p in first) and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)                                # both in training: each evaluated at step 5
        os.killpg(run.pid, signal.SIGINT)
        log = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None: os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, log[-3000:]
    assert ('stopped by Ctrl-C: stopped with a checkpoint: MDM seed 0, SIDM seed 0; not started: SCDM seed 0, AR seed 0; '
            'the same reproduce.py command continues exactly') in log, log[-3000:]
    assert all(5 <= load_checkpoint(str(p))[1]['step'] < 100000 for p in first)
    assert sorted(p.name for p in (out / 'ckpt').iterdir()) == ['MDM_seed0', 'SIDM_seed0']
