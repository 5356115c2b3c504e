"""train_mdlm.py: the loss on a hand-computed case, learning a tiny task, exact resume, settings."""
import dataclasses, importlib, math, os, signal
import pytest
import torch
from utils import load_checkpoint
from train_mdlm import TrainConfig, diffusion_loss, lr_at, mdlm_loss, settings, train


@pytest.mark.exercise(2)
def test_mdlm_loss_hand_computed():
    ce = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    masked = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    t = torch.tensor([0.5, 0.25])
    answer = torch.ones(2, 3, dtype=torch.bool)
    # (1/0.5 * (1 + 2) + 1/0.25 * 5) / 6 answer tokens
    assert mdlm_loss(ce, masked, t, answer).item() == pytest.approx((6 + 20) / 6)


def test_learning_rate_schedule_by_hand():
    """Linear warmup to the peak (the first step already above 0), then a cosine down to min_lr
    at max_iters, where it stays; 'constant' keeps the peak after the warmup."""
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=4, max_iters=14)
    assert [lr_at(i, cfg) for i in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert lr_at(9, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)          # halfway down the cosine
    assert lr_at(14, cfg) == lr_at(99, cfg) == pytest.approx(1e-4)
    assert lr_at(9, dataclasses.replace(cfg, lr_decay='constant')) == 1e-3


class Uniform(torch.nn.Module):
    """A model that knows nothing: uniform logits, so every masked token costs log V."""
    def forward(self, x, mask=None, targets=None, **kw):
        logits = torch.zeros(*x.shape, 7)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction='none')
        return logits, ce.view(x.shape)


@pytest.mark.exercise(2)
def test_diffusion_loss_weights_make_it_unbiased():
    """E[1/t * #masked] = #answer tokens: a know-nothing model scores log V per answer token."""
    ids = torch.randint(3, 7, (256, 20))
    answer = torch.zeros(256, 20, dtype=torch.bool); answer[:, 5:] = True
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(attn='full')
    losses = [diffusion_loss(Uniform(), ids, answer, cfg, gen) for _ in range(50)]
    assert sum(l for l, _ in losses) / 50 == pytest.approx(math.log(7), rel=0.05)
    assert all(ce == pytest.approx(math.log(7)) for _, ce in losses)


def tiny(tmp_path, **kw):
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={tmp_path}/out', f'--data_dir={tmp_path}/data'])
    return dataclasses.replace(cfg, **kw)


def initial_weights(cfg, ckpt):
    """The weights a run of cfg (no init_seed) started from, for the model ckpt describes."""
    from model import ModelConfig, Transformer
    torch.manual_seed(cfg.seed)
    return Transformer(ModelConfig(**ckpt['model_config'])).state_dict()


def learned(metrics):
    assert metrics['val_loss'] < 0.6 * math.log(4)           # well under a uniform guess over 4 digits
    assert metrics['val_accuracy'] > 0.1    # chance (10 blanks, 4 digits each) is about 1e-6


def test_tiny_full_attention_model_learns_4x4_sudoku(tmp_path):
    # batch 64, not the preset's 32: at 32 one seed of three solved 11% of 64, close to the bar
    learned(train(tiny(tmp_path, attn='full', max_iters=200, eval_interval=200, batch_size=64), quiet=True)[0])


def test_tiny_semi_causal_model_learns_4x4_sudoku(trained_semi_causal):
    learned(load_checkpoint(f'{trained_semi_causal}/out/ckpt.pt')[1]['metrics'])   # trained in conftest.py


def test_resume_reaches_the_same_state(tmp_path):
    # dropout draws from torch's global generator: the checkpoint must carry its state too
    straight = tiny(tmp_path / 'a', max_iters=20, eval_interval=10, lr_decay='constant', eval_n=8, dropout=0.1)
    train(straight, quiet=True)
    first = tiny(tmp_path / 'b', max_iters=10, eval_interval=10, lr_decay='constant', eval_n=8, dropout=0.1)
    train(first, quiet=True)                                  # "killed" after step 10
    train(dataclasses.replace(first, max_iters=20, resume=True), quiet=True)
    _, a = load_checkpoint(f'{tmp_path}/a/out/ckpt.pt')
    _, b = load_checkpoint(f'{tmp_path}/b/out/ckpt.pt')
    assert a['step'] == b['step'] == 20
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(sa['exp_avg'], sb['exp_avg']) and torch.equal(sa['exp_avg_sq'], sb['exp_avg_sq'])


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    """Ctrl-C during a step: the step finishes, a checkpoint of it is saved, training stops with
    a message; --resume then ends where an uninterrupted run ends. Was: everything since the last
    evaluation lost (the quick start evaluates every 500 steps)."""
    settings_ = dict(max_iters=20, eval_interval=10, lr_decay='constant', eval_n=8, dropout=0.1)
    train(tiny(tmp_path / 'a', **settings_), quiet=True)
    calls = []
    def loss_with_ctrl_c(model, *args):
        calls.append(1)
        if len(calls) == 7:                                      # in the 7th step's loss
            signal.raise_signal(signal.SIGINT)
        return diffusion_loss(model, *args)
    handler = signal.getsignal(signal.SIGINT)
    cut = tiny(tmp_path / 'b', **settings_)
    with pytest.raises(SystemExit, match='stopped by Ctrl-C after step 7 of 20: .* --resume continues exactly'):
        train(cut, loss_fn=loss_with_ctrl_c, quiet=True)
    assert signal.getsignal(signal.SIGINT) is handler           # put back as it was
    _, b = load_checkpoint(f'{tmp_path}/b/out/ckpt.pt')
    assert b['step'] == 7 and b['history'] == []
    train(dataclasses.replace(cut, resume=True), quiet=True)
    _, a = load_checkpoint(f'{tmp_path}/a/out/ckpt.pt')
    _, b = load_checkpoint(f'{tmp_path}/b/out/ckpt.pt')
    assert a['step'] == b['step'] == 20 and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(sa['exp_avg'], sb['exp_avg']) and torch.equal(sa['exp_avg_sq'], sb['exp_avg_sq'])


def test_a_fresh_run_keeps_the_checkpoint_it_replaces_as_ckpt_prev(tmp_path, capsys):
    """Training again into a folder that holds a checkpoint (without --resume) keeps the earlier
    run as ckpt.prev.pt, moved when the new run first saves. Was: replaced, lost."""
    first = tiny(tmp_path, max_iters=4, eval_interval=4, eval_n=4)
    train(first)
    earlier = (tmp_path / 'out' / 'ckpt.pt').read_bytes()
    capsys.readouterr()
    train(dataclasses.replace(first, max_iters=6, eval_interval=6))
    assert 'holds an earlier run: this run keeps it as' in capsys.readouterr().out
    assert (tmp_path / 'out' / 'ckpt.prev.pt').read_bytes() == earlier
    assert load_checkpoint(f'{tmp_path}/out/ckpt.pt')[1]['step'] == 6
    train(dataclasses.replace(first, max_iters=8, eval_interval=8, resume=True))   # resuming replaces nothing
    assert (tmp_path / 'out' / 'ckpt.prev.pt').read_bytes() == earlier


def test_evaluating_changes_nothing_in_training(tmp_path):
    """Validation draws its batches and noise from its own generator: a run evaluated every 5
    steps ends with the weights of one evaluated only at the end."""
    runs = [tiny(tmp_path / str(every), max_iters=10, eval_interval=every, eval_n=4) for every in (5, 10)]
    for cfg in runs:
        train(cfg, quiet=True)
    a, b = (load_checkpoint(f'{cfg.out_dir}/ckpt.pt')[1]['model'] for cfg in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_setting_lists_valid_ones():
    with pytest.raises(SystemExit, match='Valid settings:.*learning_rate'):
        settings(['--learning_rat=1'])
    with pytest.raises(SystemExit, match='bad value'):
        settings(['--max_iters=many'])
    cfg, _ = settings(['--task=countdown', '--n_numbers=3'])
    assert cfg.task_options == {'n_numbers': 3}
    with pytest.raises(SystemExit, match="task sudoku has no option.*degree"):     # before training or --bench
        settings(['--bench', '--degree=2'])


def test_help_lists_every_setting_with_its_value_and_comment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                                   # --help must start no work
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module('train_mdlm').main(['--max_iters=7', '--help', '--task=path_star'])
    out = capsys.readouterr().out
    assert stopped.value.code == 0 and not os.listdir(tmp_path)
    assert out.startswith('train_mdlm.py: masked diffusion training')          # the script's docstring
    lines = {line.split()[0].split('=')[0]: line for line in out.splitlines() if line.startswith('  --')}
    assert set(lines) == {f'--{f.name}' for f in dataclasses.fields(TrainConfig)}
    assert lines['--max_iters'].split()[0] == '--max_iters=7'                  # values after the other arguments
    assert lines['--task'].split()[0] == '--task=path_star'
    assert lines['--eval_n'].endswith('validation puzzles decoded for solve accuracy')
    assert lines['--attn'].endswith('semi_causal_ordered (ours) | masked_full (ours, an ablation)')  # a comment's 2nd line
    assert '  # optimisation\n  --batch_size=128' in out                       # a section heading
    assert '  path_star    --degree --arm_length --n_nodes' in out and 'Also: --bench' in out
    with pytest.raises(SystemExit):
        importlib.import_module('train_ar_mtp').main(['-h'])
    out = capsys.readouterr().out
    assert '  --mtp_window=0                 0: plain AR;' in out and 'Not used here: --attn (AR attention' in out
    assert '  --out_dir=out/ar               the checkpoint goes to' in out     # a parent's comment, a subclass's default
    with pytest.raises(SystemExit):
        importlib.import_module('sample').main(['--help'])
    assert '  --n_latent                     (unset) latent sampler' in capsys.readouterr().out


def test_resume_names_the_settings_that_changed(tmp_path, capsys):
    from train_mdlm import changed_since_checkpoint
    first = tiny(tmp_path, max_iters=5, eval_interval=5, eval_n=4)
    train(first, quiet=True)
    saved = load_checkpoint(f'{tmp_path}/out/ckpt.pt')[1]['train_config']
    assert changed_since_checkpoint(saved, dataclasses.replace(first, resume=True, eval_n=99)) == ''   # system settings
    older = {k: v for k, v in saved.items() if k != 'init_seed'}        # written before init_seed existed
    assert changed_since_checkpoint(older, first) == '' and changed_since_checkpoint(older, dataclasses.replace(first, init_seed=2)) == 'init_seed: -1 -> 2'
    again = dataclasses.replace(first, max_iters=6, learning_rate=1e-4, resume=True)
    assert changed_since_checkpoint(saved, again) == 'max_iters: 5 -> 6, learning_rate: 0.003 -> 0.0001'
    train(again)
    assert 'with changed settings: max_iters: 5 -> 6, learning_rate: 0.003 -> 0.0001' in capsys.readouterr().out


def test_resume_refuses_foreign_or_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match='does not exist'):
        train(tiny(tmp_path, resume=True), quiet=True)
    (tmp_path / 'out').mkdir(); (tmp_path / 'out' / 'ckpt.pt').write_text('not a checkpoint')
    with pytest.raises(SystemExit, match='not a readable checkpoint'):
        train(tiny(tmp_path, resume=True), quiet=True)


def test_ema_weights_are_the_average_of_the_raw_ones(tmp_path):
    """After one step from the initial weights w0 to w1, EMA = w0 + (1 - ema) (w1 - w0): the saved
    'model' (used for evaluation and sampling) is the EMA, 'raw_model' the trained weights."""
    cfg = tiny(tmp_path, max_iters=1, eval_interval=1, eval_n=4, ema=0.75)
    train(cfg, quiet=True)
    _, ckpt = load_checkpoint(f'{tmp_path}/out/ckpt.pt')
    w0 = initial_weights(cfg, ckpt)
    for k, raw in ckpt['raw_model'].items():
        assert not torch.equal(raw, w0[k]) or k.endswith('norm.weight'), k       # it trained
        assert torch.allclose(ckpt['model'][k], w0[k] + 0.25 * (raw - w0[k]), atol=1e-6), k


def test_mask_all_puts_every_position_in_the_loss(tmp_path):
    seen = []
    def spy(model, ids, answer_mask, cfg, gen, rows=slice(None)):
        seen.append(answer_mask[rows].clone())
        return diffusion_loss(model, ids, answer_mask, cfg, gen, rows)
    train(tiny(tmp_path, max_iters=1, eval_interval=1, eval_n=4, mask_all=True), loss_fn=spy, quiet=True)
    assert all(m.all() for m in seen)
    seen.clear()
    train(tiny(tmp_path / 'b', max_iters=1, eval_interval=1, eval_n=4), loss_fn=spy, quiet=True)
    assert all(not m.all() for m in seen)                   # the givens stay out of the loss


def test_ordered_variant_ranks_the_givens_below_every_answer_cell(monkeypatch):
    """semi_causal_ordered trains with the givens at rank -1 (decoded first) and the answer cells
    at random ranks in [0, 1): the order in which the sampler will have decoded them."""
    import train_mdlm
    seen = []
    real = train_mdlm.attention_mask
    monkeypatch.setattr(train_mdlm, 'attention_mask', lambda attn, masked, rank: seen.append(rank) or real(attn, masked, rank))
    ids = torch.randint(3, 7, (64, 20))
    answer = torch.zeros(64, 20, dtype=torch.bool); answer[:, 5:] = True
    diffusion_loss(Uniform(), ids, answer, TrainConfig(attn='semi_causal_ordered'), torch.Generator().manual_seed(0))
    rank = seen[0]
    assert (rank[~answer] == -1).all() and (rank[answer] >= 0).all() and (rank[answer] < 1).all()
    assert len(set(rank[answer].tolist())) == int(answer.sum())          # no ties among answer cells


def test_independent_share_trains_some_examples_as_sidm(monkeypatch):
    """--independent_share (ours): that share of examples ranks all its masked cells alike, so under
    semi_causal attention none sees another. At 1 the mask is SIDM's exactly, for the same noise;
    at 0.5 about half the rows are; at 0 (the default) nothing changes and nothing more is drawn."""
    import train_mdlm
    seen = []
    real = train_mdlm.attention_mask
    monkeypatch.setattr(train_mdlm, 'attention_mask', lambda attn, masked, rank: seen.append(real(attn, masked, rank))
                        or seen[-1])
    ids = torch.randint(3, 7, (64, 20))
    answer = torch.zeros(64, 20, dtype=torch.bool); answer[:, 5:] = True
    masks = {}
    for attn, share in (('independent', 0.0), ('semi_causal', 1.0), ('semi_causal', 0.5), ('semi_causal', 0.0)):
        gen = torch.Generator().manual_seed(0)
        diffusion_loss(Uniform(), ids, answer, TrainConfig(attn=attn, independent_share=share), gen)
        masks[attn, share] = seen[-1]
        if share == 0.0:
            masks[attn, 'next draw'] = torch.rand(1, generator=gen)
    assert torch.equal(masks['semi_causal', 1.0], masks['independent', 0.0])
    half, sidm, none = masks['semi_causal', 0.5], masks['independent', 0.0], masks['semi_causal', 0.0]
    as_sidm, as_before = (half == sidm).flatten(1).all(1), (half == none).flatten(1).all(1)
    assert (as_sidm | as_before).all()                        # each row one or the other, ranks unchanged
    assert 16 < int((as_sidm & ~as_before).sum()) < 48        # about half of 64 changed
    assert torch.equal(masks['semi_causal', 'next draw'], masks['independent', 'next draw'])   # nothing more drawn


def test_training_benchmark_measures_every_row(capsys):
    """`--bench` times the plain GPT (as nanoGPT writes it and with our attend), ours as AR and
    as each diffusion model, ours with LayerNorm, with PyTorch's RMSNorm (autograd backward) and
    without rotary embeddings and, under bf16 autocast, ours in float32; each row a positive
    tokens/s, printed as a ratio to the plain GPT, and the like-for-like ratio."""
    import model
    from train_mdlm import DIFFUSION_ATTNS, bench
    rotary = model.rotary
    cfg, do_bench = settings(['presets/tiny_test.json', '--bench', '--dtype=bfloat16', '--batch_size=8'])   # speed is not tested
    assert do_bench
    tokens_per_s = bench(cfg, steps=1)
    expected = {'plain GPT (causal)', 'plain GPT, our attend', 'ours, causal', 'ours, causal, LayerNorm',
                'ours, causal, autograd RMSNorm', 'ours, causal, no rotary', 'ours, causal, float32', *(f'ours, {a}' for a in DIFFUSION_ATTNS)}
    assert set(tokens_per_s) == expected and all(v > 0 for v in tokens_per_s.values())
    assert model.rotary is rotary                                   # the 'no rotary' row put it back
    out = capsys.readouterr().out
    assert all(name in out for name in expected) and '1.00x plain GPT (1.00-1.00)' in out
    assert 'like for like, ours causal / plain GPT with our attend' in out


def test_float16_scales_the_loss_and_skips_a_step_whose_gradients_overflow(tmp_path, monkeypatch):
    """--dtype=float16 (GPUs without bf16) trains through a GradScaler, the CUDA path checked on
    CPU: with a scale so high that the scaled gradients overflow, the step is skipped (weights as
    initialised, scale halved), not reported as divergence; at an ordinary scale the step is
    taken; the scale is checkpointed and a resumed run continues from it. bf16 has no scaler."""
    real = torch.amp.GradScaler
    def start_scale(scale):
        monkeypatch.setattr(torch.amp, 'GradScaler', lambda *a, **k: real(*a, init_scale=scale, **k))
    start_scale(2.0 ** 100)
    cfg = tiny(tmp_path / 'high', max_iters=1, eval_interval=1, eval_n=4, dtype='float16')
    train(cfg, quiet=True)
    _, ckpt = load_checkpoint(f'{tmp_path}/high/out/ckpt.pt')
    w0 = initial_weights(cfg, ckpt)
    assert all(torch.equal(ckpt['model'][k], w0[k]) for k in w0)                   # skipped
    assert ckpt['scaler']['scale'] == 2.0 ** 99
    train(dataclasses.replace(cfg, max_iters=2, resume=True), quiet=True)
    assert load_checkpoint(f'{tmp_path}/high/out/ckpt.pt')[1]['scaler']['scale'] == 2.0 ** 98   # from 2^99

    start_scale(2.0 ** 8)
    train(dataclasses.replace(cfg, out_dir=f'{tmp_path}/low/out'), quiet=True)
    _, ckpt = load_checkpoint(f'{tmp_path}/low/out/ckpt.pt')
    assert not torch.equal(ckpt['model']['embed.weight'], w0['embed.weight'])      # taken
    assert ckpt['scaler']['scale'] == 2.0 ** 8
    train(dataclasses.replace(cfg, out_dir=f'{tmp_path}/bf16/out', dtype='bfloat16'), quiet=True)
    assert load_checkpoint(f'{tmp_path}/bf16/out/ckpt.pt')[1]['scaler'] == {}


def first_steps(tmp_path, name, **kw):
    """What a two-step run of tiny(**kw) trained on: its initial weights (as its loss first saw
    them) and its batches."""
    seen = dict(batches=[])
    def spy(model, ids, answer_mask, cfg, gen, rows=slice(None)):
        seen.setdefault('w0', {k: v.detach().clone() for k, v in model.state_dict().items()})
        seen['batches'].append(ids.clone())
        return diffusion_loss(model, ids, answer_mask, cfg, gen, rows)
    train(tiny(tmp_path / name, max_iters=2, eval_interval=2, eval_n=4, **kw), loss_fn=spy, quiet=True)
    return seen['w0'], torch.stack(seen['batches'])


def test_init_seed_changes_the_initial_weights_and_nothing_else(tmp_path):
    """seed fixes the initial weights and the batch order; init_seed, when set, takes the initial
    weights over alone: so a result can be traced to one or the other."""
    w, batches = first_steps(tmp_path, 'default')
    w_init5, batches_init5 = first_steps(tmp_path, 'init5', init_seed=5)
    w_seed3, batches_seed3 = first_steps(tmp_path, 'seed3_init0', seed=3, init_seed=0)
    embed = 'embed.weight'
    assert torch.equal(batches_init5, batches) and not torch.equal(w_init5[embed], w[embed])
    assert torch.equal(w_seed3[embed], w[embed]) and not torch.equal(batches_seed3, batches)


def test_init_std_rescales_the_same_initial_draw(tmp_path):
    """init_std scales every matrix of the seed's initial weights by one factor (so a result's
    scale can be told from its draw), leaves the norms' weights at 1, and must be positive."""
    default, small = first_steps(tmp_path, 'default')[0], first_steps(tmp_path, 'small', init_std=0.005)[0]
    assert default.keys() == small.keys()
    for name, w in default.items():
        expected = w / 4 if w.dim() >= 2 else w
        assert torch.allclose(small[name], expected, rtol=1e-6, atol=0), name
    assert small['norm.weight'].eq(1).all() and not torch.equal(small['embed.weight'], default['embed.weight'])
    with pytest.raises(SystemExit, match='init_std must be positive'):
        train(tiny(tmp_path / 'zero', init_std=0.0), quiet=True)
