"""Course support (see exercises.py). A test that fails only because an exercise it merely uses
is unsolved (NotImplementedError('Exercise N: ...')) is reported as skipped, with that reason; a
test marked @pytest.mark.exercise(N) still fails for its own exercise N. With EXERCISE_REPORT set,
the outcome of every exercise test is written there as JSON for `exercises.py --grade`."""
import json, os, re
import pytest

OUTCOMES = []


def unsolved_exercise(excinfo):
    """The exercise number if this failure is an unsolved exercise's NotImplementedError."""
    text = f'{excinfo.typename}: {excinfo.value} {getattr(excinfo.value, "stderr", "")}'   # + a subprocess's
    found = re.search(r'NotImplementedError: Exercise (\d+):', text)
    return int(found.group(1)) if found else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    marker = item.get_closest_marker('exercise')
    own = marker.args[0] if marker else None
    if report.failed and call.excinfo is not None:
        n = unsolved_exercise(call.excinfo)
        if n is not None and n != own:
            report.outcome = 'skipped'
            report.longrepr = (str(item.path), item.location[1] or 0, f'waits for Exercise {n} (exercises.py)')
    if own is not None and (report.when == 'call' or report.outcome != 'passed'):
        OUTCOMES.append(dict(test=item.nodeid, exercise=own, when=report.when, outcome=report.outcome))


def pytest_sessionfinish(session):
    path = os.environ.get('EXERCISE_REPORT')
    if path:
        final = {}
        for o in OUTCOMES:               # a test's outcome: its first non-pass, else its call's pass
            if o['test'] not in final or final[o['test']]['outcome'] == 'passed':
                final[o['test']] = o
        with open(path, 'w') as f:
            json.dump(list(final.values()), f)


@pytest.fixture(scope='session')
def trained_semi_causal(tmp_path_factory):
    """One tiny 4x4 semi-causal model (300 steps, 4 to 7 s) shared by the tests that need a trained
    checkpoint: the folder holding out/ckpt.pt (its final metrics are in the checkpoint)."""
    from train_mdlm import settings, train
    d = tmp_path_factory.mktemp('semi_causal')
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={d}/out', f'--data_dir={d}/data', '--attn=semi_causal',
                       '--max_iters=300', '--eval_interval=300'])
    train(cfg, quiet=True)
    return d


@pytest.fixture
def read_only_disk(monkeypatch):
    """Every new file refused as on a read-only disk, for the check that a folder takes a file
    (data.check_writable makes one there): permission bits never stop root, this does."""
    import tempfile
    def refuse(*args, **kwargs):
        raise OSError(30, 'Read-only file system')
    monkeypatch.setattr(tempfile, 'TemporaryFile', refuse)
