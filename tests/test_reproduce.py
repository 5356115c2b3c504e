"""reproduce.py --scale=smoke: every table and figure is written with the expected structure.
(This checks the pipeline, not the scientific outcome.)"""
import csv, json, subprocess, sys


def test_smoke_reproduction_writes_every_file(tmp_path):
    out = tmp_path / 'results'
    r = subprocess.run([sys.executable, 'reproduce.py', '--scale=smoke', '--seeds=0,1', f'--out={out}'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out / 'models.csv')))
    assert {(r['model'], r['seed']) for r in rows} == {(m, s) for m in ('MDM', 'SIDM', 'SCDM', 'AR', 'AR+MTP', 'AR-NTP', 'AR+MTP causal prefix') for s in '01'}
    assert all(0 <= float(r['accuracy']) <= 1 and int(r['n']) == 32 for r in rows)
    for seed in '01':
        sweep = list(csv.DictReader(open(out / f'sweep_latent_seed{seed}.csv')))
        assert [r['k'] for r in sweep] == ['0', '1', 'all', 'full', 'independent']
        assert set(sweep[0]) == {'k', 'accuracy', 'nfe_per_sample', 'positions_per_sample', 'seconds_per_sample'}
        assert float(sweep[0]['positions_per_sample']) < float(sweep[2]['positions_per_sample'])  # k costs
        assert (out / f'sweep_latent_seed{seed}.png').stat().st_size > 1000
        assert [r['k'] for r in csv.DictReader(open(out / f'sweep_window_seed{seed}.csv'))] == ['1', '-1']
    summary = json.load(open(out / 'summary.json'))
    assert summary['models']['MDM (random)']['per_seed'].__len__() == 2 and 'hardware' in summary
    assert (out / 'dial.png').stat().st_size > 1000
    table = (out / 'table.md').read_text()
    assert '| MDM | random |' in table and '| all |' in table and '| AR+MTP latent window W' in table
    assert [r['window'] for r in summary['ar_mtp_window']] == ['1', '-1']


def test_every_scale_builds_valid_settings():
    """The gpu scale cannot be run in CI; at least its settings must be valid TrainConfigs and
    tasks, so that a typo does not surface after an hour on a GPU."""
    from reproduce import AR_MODELS, SCALES
    from tasks import get_task
    from train_mdlm import TrainConfig
    names = list(AR_MODELS)
    for scale in SCALES.values():
        for settings in [{'task': 'sudoku', **scale['diffusion']}] + [{**scale['ar'], **kw} for kw in AR_MODELS.values()]:
            cfg = TrainConfig(**settings)                 # an unknown key raises TypeError
            get_task(cfg.task, **cfg.task_options)        # a wrong task option raises ValueError
        assert set(scale['ar_models'].split(',')) <= set(names)
