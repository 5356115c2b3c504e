"""Data-parallel training under torchrun (CPU, gloo, 2 processes): the same global batch and seed
give the same run (and log the same training loss) as one process, checkpoints move between the
two, gradient accumulation of 2 x 32 equals one batch of 64, and bad set-ups fail clearly."""
import dataclasses, os, subprocess, sys
import pytest
import torch
from train_mdlm import settings, train
from utils import load_checkpoint

ARGS = ['presets/tiny_test.json', '--attn=full', '--batch_size=64', '--eval_interval=10', '--eval_n=8', '--lr_decay=constant']


def run(tmp_path, name, nproc, *extra):
    launcher = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                    f'--nproc_per_node={nproc}']
    r = subprocess.run(launcher + ['train_mdlm.py', *ARGS, f'--out_dir={tmp_path}/{name}', f'--data_dir={tmp_path}/data',
                                   *extra], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('final: ') == 1, r.stdout[-3000:]          # rank 0 alone reports
    return load_checkpoint(f'{tmp_path}/{name}/ckpt.pt')[1]


def close(a, b, rel=1e-4):
    assert a['metrics']['val_loss'] == pytest.approx(b['metrics']['val_loss'], rel=rel)
    # the logged training loss is the whole batch's, not the last piece's or rank 0's rows'
    assert a['metrics']['train_loss'] == pytest.approx(b['metrics']['train_loss'], rel=rel)
    for k in a['model']:
        assert torch.allclose(a['model'][k], b['model'][k], rtol=1e-3, atol=1e-5), k


@pytest.mark.slow
def test_ddp_equals_one_process_and_checkpoints_move_between_them(tmp_path):
    one = run(tmp_path, 'one', 1, '--max_iters=20')
    two = run(tmp_path, 'two', 2, '--max_iters=20')
    assert one['step'] == two['step'] == 20
    close(one, two)
    a = run(tmp_path, 'two', 1, '--max_iters=30', '--resume')        # a DDP checkpoint, one process
    b = run(tmp_path, 'one', 2, '--max_iters=30', '--resume')        # a one-process checkpoint, DDP
    assert a['step'] == b['step'] == 30
    close(a, b)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    cfg, _ = settings(ARGS + [f'--data_dir={tmp_path}/data', '--max_iters=20', '--dtype=float32'])
    big = train(dataclasses.replace(cfg, out_dir=f'{tmp_path}/big'), quiet=True)[1]
    accum = train(dataclasses.replace(cfg, out_dir=f'{tmp_path}/accum', grad_accum=2), quiet=True)[1]
    close(load_checkpoint(big)[1], load_checkpoint(accum)[1])


def test_bad_splits_fail_clearly(tmp_path):
    cfg, _ = settings(ARGS + [f'--out_dir={tmp_path}/x', f'--data_dir={tmp_path}/data'])
    with pytest.raises(SystemExit, match='must split evenly'):
        train(dataclasses.replace(cfg, grad_accum=3), quiet=True)
    with pytest.raises(SystemExit, match='must split evenly'):
        train(dataclasses.replace(cfg, batch_size=1, grad_accum=2), quiet=True)


def test_a_torchrun_process_ends_at_once_and_keeps_its_output(monkeypatch):
    # Under torchrun (RANK set) the scripts end with os._exit, skipping Python's shutdown, where
    # DDP's leftover gloo threads can abort a finished run; output still buffered must come out.
    code = ('import sys, train_mdlm; print("printed"); print("to stderr", file=sys.stderr); '
            'train_mdlm.end_torchrun_process(); print("after")')
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'PYTHONUNBUFFERED')}   # pipes: buffered
    under = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=dict(env, RANK='0'))
    assert (under.returncode, under.stdout, under.stderr) == (0, 'printed\n', 'to stderr\n')
    from train_mdlm import end_torchrun_process      # alone (no RANK) it returns: in-process is enough
    monkeypatch.delenv('RANK', raising=False)
    assert end_torchrun_process() is None
