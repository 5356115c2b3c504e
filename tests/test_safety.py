"""What a newcomer must be able to trust: a shared checkpoint cannot run code, divergence stops
without destroying the last good checkpoint, the same seed gives the same run, malformed puzzle
lines are reported (never a traceback), and settings that mean nothing are refused."""
import dataclasses, importlib, os, re, subprocess, sys
import numpy as np
import pytest
import torch
from train_mdlm import settings, train
from utils import CHECKPOINT_KIND, load_checkpoint


def tiny(tmp_path, **kw):
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={tmp_path}/out', f'--data_dir={tmp_path}/data'])
    return dataclasses.replace(cfg, **kw)


class Evil:
    """Unpickling this calls open(path, 'w'): a file appears if loading runs code."""
    def __init__(self, path): self.path = path
    def __reduce__(self): return (open, (self.path, 'w'))


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pt'
    torch.save(dict(kind=CHECKPOINT_KIND, model=Evil(str(marker))), evil)
    with pytest.raises(SystemExit, match='refusing to load.*could run code'):
        load_checkpoint(str(evil))
    r = subprocess.run([sys.executable, 'sample.py', f'--ckpt={evil}'], capture_output=True, text=True)
    assert r.returncode != 0 and 'refusing to load' in r.stderr and 'Traceback' not in r.stderr
    assert not marker.exists()                                  # nothing ran, in either path


def test_incomplete_or_foreign_checkpoint_is_one_clear_line(tmp_path):
    path = tmp_path / 'partial.pt'
    torch.save(dict(kind=CHECKPOINT_KIND, model={}), path)
    with pytest.raises(SystemExit, match='incomplete: it has no model_config'):
        load_checkpoint(str(path))
    torch.save(dict(weights=torch.zeros(3)), path)
    with pytest.raises(SystemExit, match='not a checkpoint written by this version'):
        load_checkpoint(str(path))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    good = tiny(tmp_path, max_iters=10, eval_interval=10, eval_n=8)
    train(good, quiet=True)
    before = (tmp_path / 'out' / 'ckpt.pt').read_bytes()
    bad = dataclasses.replace(good, max_iters=60, learning_rate=1e6, grad_clip=0.0, resume=True)
    with pytest.raises(SystemExit, match=r'diverged at step \d+.*untouched'):
        train(bad, quiet=True)
    assert (tmp_path / 'out' / 'ckpt.pt').read_bytes() == before      # byte for byte
    model, ckpt = load_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    assert ckpt['step'] == 10 and all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_weights_are_never_written(tmp_path):
    from utils import save_checkpoint
    with pytest.raises(SystemExit, match='non-finite weights'):
        save_checkpoint(str(tmp_path / 'c.pt'), model={'w': torch.tensor([1.0, float('nan')])})
    assert not (tmp_path / 'c.pt').exists()


def test_same_seed_same_run(tmp_path):
    a = train(tiny(tmp_path / 'a', max_iters=15, eval_interval=5, eval_n=8), quiet=True)[0]
    b = train(tiny(tmp_path / 'b', max_iters=15, eval_interval=5, eval_n=8), quiet=True)[0]
    assert a == b


def test_fuzzed_malformed_9x9_lines_are_reported_never_a_traceback(tmp_path):
    """300 random corruptions of a standard 81-character line: each is either a valid puzzle or
    rejected by `data.py --check` with file:line: reason, and --skip_bad counts them."""
    from data import TaskFormatError, read_examples
    from tasks import get_task
    task = get_task('sudoku', size=9)
    rng = np.random.default_rng(0)
    good = '53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79'
    lines = []
    for _ in range(300):
        s = list(good)
        for _ in range(rng.integers(1, 4)):
            op = rng.integers(4)
            i = int(rng.integers(len(s)))
            if op == 0: s[i] = chr(int(rng.integers(33, 127)))          # a stray character
            elif op == 1: del s[i]                                    # too short
            elif op == 2: s.insert(i, str(rng.integers(10)))          # too long
            else: s[i] = s[(i + 1) % len(s)] if s[i] == '.' else s[i]  # maybe a repeated digit
        lines.append(''.join(s))
    path = tmp_path / 'fuzz.txt'
    path.write_text('\n'.join(lines) + '\n')
    n_bad = 0
    for i, line in enumerate(lines):
        one = tmp_path / 'one.txt'
        one.write_text(line + '\n')
        try:
            read_examples(task, str(one))
        except TaskFormatError as e:
            n_bad += 1
            assert str(e).startswith(f'{one}:1: ')
    assert n_bad > 200                                              # most corruptions are invalid
    r = subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=9', f'--check={path}', '--skip_bad'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and 'Traceback' not in r.stderr
    assert f'"skipped": {n_bad}' in r.stdout.splitlines()[-1]
    r = subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=9', f'--check={path}'],
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'fuzz.txt:' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.parametrize('script,args,message', [
    ('train_mdlm', ['--mtp_window=2'], "unknown setting 'mtp_window'"),
    ('train_mdlm', ['--max_iter=5'], "unknown setting 'max_iter' in the command line. Did you mean 'max_iters'?"),
    ('train_mdlm', ['--learning_rate=1e-3', '--learning_rate=5e-4'], '--learning_rate is given twice'),
    ('sample', ['--n=5', '--n=6'], '--n is given twice'),
    ('train_mdlm', ['--attn=causal'], 'AR models are trained by train_ar_mtp.py'),
    ('train_mdlm', ['--independent_share=1.5'], 'independent_share is a share of examples, 0 to 1, got 1.5'),
    ('train_mdlm', ['--attn=full', '--independent_share=0.25'], 'it applies to semi_causal models, not --attn=full'),
    ('train_ar_mtp', ['--independent_share=0.25'], 'it shapes semi-causal diffusion training'),
    ('train_ar_mtp', ['--attn=full'], 'AR attention follows from --mtp_window'),
    ('train_ar_mtp', ['--bench'], 'python train_mdlm.py --bench'),
    ('train_ar_mtp', ['--ntp_only'], 'apply to AR+MTP'),
    ('train_ar_mtp', ['--teacherless=0.5'], 'apply to AR+MTP'),
    ('train_ar_mtp', ['--mtp_window=-1', '--teacherless=2'], 'share of examples'),
    ('sample', ['--policy=uniform'], '--order=random'),
    ('train_mdlm', ['--dtype=bf16'], "dtype must be one of auto, bfloat16, float16, float32, not 'bf16'"),
    ('train_mdlm', ['--compile=yes'], "compile must be auto, true or false, not 'yes'"),
    ('train_ar_mtp', ['--device=gpu'], "unknown device 'gpu'"),
    ('sample', ['--dtype=fp16'], "dtype must be one of"),
    ('sample', ['--device=cuda'], "device 'cuda' is not available on this machine"),
    ('train_mdlm', ['--lr_decay=linear'], "lr_decay must be cosine or constant, not 'linear'"),
    ('train_mdlm', ['--batch_size=0'], 'batch_size and grad_accum must be at least 1'),  # was: "diverged"
    ('train_mdlm', ['--eps=2'], 'eps must be between 0 and 1'),
    ('train_mdlm', ['--bench', '--n_head=5'], 'n_embd (128) must be a multiple of 2 x n_head (5)'),
    ('train_mdlm', ['--bench', '--n_layer=0'], 'n_layer, n_head and n_embd must be at least 1'),   # was: n_embd
    ('train_mdlm', ['--bench', 'presets/sudoku9.json'], "no preset 'presets/sudoku9.json': not a file, nor a name "
                                                         'in presets/ (sudoku9_cpu, sudoku9_gpu, tiny_test)'),
    ('train_mdlm', ['--bench', 'tiny_test.json', '--foo=1'], "unknown setting 'foo'"),   # the preset found in presets/
    ('train_mdlm', ['--bench', '--max_iters=5', '--size=9', '--attn=full'], '--bench does not use --max_iters, --attn'),  # was: ignored
    ('train_mdlm', ['--preset=sudoku9_cpu', '--bench', '--out_dir=x'], '--bench does not use --out_dir'),   # the preset's keys are fine
    ('train_ar_mtp', ['--mtp_window=-1', '--max_iters=0'], 'max_iters must be at least 1'),
    ('train_ar_mtp', ['--mtp_window=-3'], 'mtp_window must be 0 (AR), a window W > 0 or -1 (all)'),
    ('sample', ['--n=-5'], '--n and --batch_size must be at least 1, got -5'),    # was: all but the last 5
    ('sample', ['--output=-'], '--output=- would mix the answers with the summary'),   # was: a file named '-'
    ('sample', ['--n=1.5'], "bad value '1.5' for n (expected int)"),         # unset, was: guessed a float
    ('sample', ['--n_candidates=1.5'], "bad value '1.5' for n_candidates (expected int)"),   # was: decoded
    ('reproduce', ['--seeds=0,a'], "--seeds must be a comma-separated list of integers, got '0,a'"),
    ('reproduce', ['--seeds=0,1.5'], "--seeds must be a comma-separated list of integers, got '0,1.5'"),
    ('reproduce', ['--scale=smoke', '--seeds='], "--seeds must name at least one seed, each once, got ''"),
    ('reproduce', ['--scale=smoke', '--seeds=0,1,00'], "--seeds must name at least one seed, each once, got '0,1,00'"),
    ('reproduce', ['--sweep_latent=0,x', '--ckpt=x.pt'], "list of counts >= 0 or 'all'"),
    ('reproduce', ['--sweep_threshold=0,1.5', '--ckpt=x.pt'], 'list of numbers between 0 and 1'),
    ('reproduce', ['--ckpt=x.pt'], 'a --scale=cpu run does not use --ckpt'),          # was: ran the cpu scale
    ('reproduce', ['--probe_window'], '--probe_window needs --ckpt=PATH'),
    ('reproduce', ['--calibration=0.9,2', '--ckpt=x.pt'], 'list of numbers between 0 and 1'),
    ('reproduce', ['--calibration=0.9'], '--calibration needs --ckpt=PATH'),
    ('reproduce', ['--bench_cache', '--probe_window', '--ckpt=x.pt'], 'one job per command'),
    ('reproduce', ['--bench_cache', '--ckpt=x.pt', '--seeds=1'], '--bench_cache does not use --seeds'),
    ('reproduce', ['--bench_cache', '--ckpt=x.pt', '--ref_ckpts=y.pt'], '--bench_cache does not use --ref_ckpts'),
    ('reproduce', ['--table', '--n=5'], '--table does not use --n'),
    ('reproduce', ['--seeds=0', '--input=mine.txt'], 'a --scale=cpu run does not use --input'),
    ('reproduce', ['--table', '--out=nowhere'], 'nowhere/summary.json does not exist'),   # was: a traceback
    ('reproduce', ['--processes=0'], '--processes must be at least 1, got 0'),
    ('reproduce', ['--table', '--processes=2'], '--table does not use --processes'),
    ('reproduce', ['--bench_cache', '--ckpt=x.pt', '--processes=2'], '--bench_cache does not use --processes'),
    ('data', ['--split=dev'], "split must be one of train, val, test, not 'dev'"),                 # was: KeyError
    ('data', ['--check=answers.txt', '--n=5'], '--check does not use --n'),                         # was: ignored
    ('data', ['--bench', '--houses=3'], '--bench does not use --houses'),
    ('data', ['--bench', '--task=zebra'], '--bench does not use --task'),
    ('data', ['--skip_bad'], 'generating does not use --skip_bad'),
    ('data', ['--compare=b.txt'], 'generating does not use --compare'),
    ('sample', ['--skip_bad'], 'decoding without --input does not use --skip_bad'),
    ('data', ['--task=path_star', '--degree=0'], 'degree and arm_length must be at least 1'),
    ('data', ['--size=4', '--givens=2'], 'no 4x4 puzzle with 2 givens in 4096 random grids'),  # looped for ever
    ('train_mdlm', ['--size=4', '--givens=3'], 'no 4x4 puzzle with 3 givens'),
])
def test_settings_that_mean_nothing_or_have_bad_values_are_refused(script, args, message, tmp_path, monkeypatch):
    """In-process through each script's main(argv) (a subprocess per case cost 1.5 s of imports);
    the command line itself, error on stderr and no traceback, is checked once below."""
    if args == ['--device=cuda'] and torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    monkeypatch.chdir(tmp_path)                             # a refusal that fails to refuse writes nothing here
    with pytest.raises(SystemExit, match=re.escape(message)):
        importlib.import_module(script).main(args)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize('script,args,message', [
    ('sample', ['--ckpt=none.pt', '--output=taken/answers.txt'], "--output 'taken/answers.txt' cannot hold the answers: "
                                                               '.*taken is a file'),   # was: decoded, then a traceback
    ('sample', ['--ckpt=none.pt', '--output=.'], "--output '.' is a folder: name a file"),
    ('data', ['--size=4', '--out=taken/puzzles.txt'], "--out 'taken/puzzles.txt' cannot hold the examples"),
    ('data', ['--size=4', '--out=.'], "--out '.' is a folder"),           # was: a file '..tmp' left behind
    ('data', ['--size=4', '--out=new/'], "--out 'new/' is a folder"),     # was: a traceback after generating
    ('reproduce', ['--scale=smoke', '--out=taken'], "--out 'taken' cannot hold the results: .*taken is a file"),
    ('train_mdlm', ['--out_dir=taken', '--max_iters=1'], "out_dir 'taken' cannot hold checkpoints: .*taken is a file"),
    ('train_mdlm', ['--out_dir=taken/run1', '--max_iters=1'], "out_dir 'taken/run1' cannot hold checkpoints: "
                                                               '.*taken is a file'),   # was: trained, then a traceback
])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(script, args, message, tmp_path, monkeypatch):
    """Refused before any work (before a checkpoint is even read, so none is needed here), and
    nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'taken').write_text('a file, not a folder')
    with pytest.raises(SystemExit, match=message):
        importlib.import_module(script).main(args)
    assert os.listdir(tmp_path) == ['taken']


def test_an_out_dir_on_which_no_file_can_be_written_is_refused_before_any_work(tmp_path, monkeypatch, request):
    """A folder without write permission, or (as root, whom permission bits never stop) on a
    read-only disk: refused at once, and nothing is written. Was: os.access, which says yes to root."""
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:                           # root writes there anyway: make the disk refuse
        request.getfixturevalue('read_only_disk')
    with pytest.raises(SystemExit, match="out_dir 'locked/run1' cannot hold checkpoints: .*locked is not writable"):
        importlib.import_module('train_mdlm').main(['--out_dir=locked/run1', '--max_iters=1'])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ['locked'] and not os.listdir(locked)
    locked.chmod(0o755)


def test_the_evaluation_line_counts_the_puzzles_it_decoded(tmp_path, capsys):
    """eval_n above n_val decodes every validation puzzle; the log said it had decoded eval_n."""
    train(tiny(tmp_path, max_iters=1, eval_interval=1, eval_n=1000))        # the preset's n_val is 64
    assert '(64 puzzles)' in capsys.readouterr().out


def test_a_refusal_on_the_command_line_is_one_line_on_stderr():
    r = subprocess.run([sys.executable, 'train_mdlm.py', '--attn=causal'], capture_output=True, text=True)
    assert r.returncode != 0 and 'AR models are trained by train_ar_mtp.py' in r.stderr
    assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
