"""AR and AR+MTP: KV-cache parity, the MTP loss and its window, tiny models learn."""
import math, re
import numpy as np
import pytest
import torch
from model import KVCache, ModelConfig, Transformer
from sample import decode_ar, decode_ar_mtp
from data import generate
from tasks import MASK, get_task
from train_ar_mtp import ARConfig, ar_loss, mtp_inputs, mtp_loss, objective, window_accuracy
from train_mdlm import settings, train

TASK = get_task('sudoku', size=4, givens=6, layout='prompt')


def model_and_batch(n=3):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(TASK.vocab), block_size=TASK.seq_len, n_layer=2, n_head=2, n_embd=32)).eval()
    ex = generate(TASK, n, seed=0, workers=1)
    return model, torch.from_numpy(np.stack([TASK.encode(p)[0] for p, _ in ex]))


@pytest.mark.exercise(5)
def test_kv_cache_logits_match_a_full_causal_pass():
    model, x = model_and_batch()
    x = x.masked_fill(x == MASK, 5)
    full, _ = model(x, is_causal=True)
    cache = KVCache(model.cfg.n_layer)
    pieces = [model(x[:, :10], is_causal=True, cache=cache)[0]]; cache.commit(10)
    for p in range(10, x.shape[1]):
        pieces.append(model(x[:, p:p + 1], pos=torch.full((3, 1), p), cache=cache)[0]); cache.commit(1)
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


@pytest.mark.exercise(5)
def test_cached_and_uncached_decoding_agree():
    model, x = model_and_batch()
    a, sa = decode_ar(model, x, use_cache=True)
    b, sb = decode_ar(model, x, use_cache=False)
    assert torch.equal(a, b) and (a != MASK).all()
    assert sa['positions'][0] < sb['positions'][0] / 3           # the cache saves work
    c, sc = decode_ar_mtp(model, x, 'causal_prefix', window=3, use_cache=True)
    d, sd = decode_ar_mtp(model, x, 'causal_prefix', window=3, use_cache=False)
    assert torch.equal(c, d) and sc['positions'][0] == 16 + sum(min(33, c + 3) - c + 1 for c in range(17, 33))
    assert sd['positions'][0] == sum(min(33, c + 3) for c in range(17, 33))   # uncached: up to the window


@pytest.mark.parametrize('attn', ['prefix', 'causal_prefix'])
def test_dropping_positions_beyond_the_window_is_exact(attn):
    """The decoder runs only positions up to the window's end; a pass over the whole sequence
    (positions beyond the window masked and unseen) gives the same next-token logits."""
    from model import attention_mask
    model, x = model_and_batch()
    c, W, T = 17, 3, x.shape[1]
    rank = (torch.arange(T) - c).float().expand(3, -1)
    full, _ = model(x, attn_mask=attention_mask(attn, x == MASK, rank, W))
    short, _ = model(x[:, :c + W], attn_mask=attention_mask(attn, x[:, :c + W] == MASK, rank[:, :c + W], W))
    assert torch.allclose(short[:, :c + W], full[:, :c + W], atol=1e-5)
    out, stats = decode_ar_mtp(model, x, attn, window=W, use_cache=False)
    assert (out[:, c:] != MASK).all() and stats['positions'][0] < 16 * T


class Recorder(torch.nn.Module):
    """Runs the model and keeps every call's position ids and logits."""
    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.calls = model, model.cfg, []

    def forward(self, x, pos=None, **kw):
        logits, ce = self.model(x, pos=pos, **kw)
        self.calls.append((pos, logits))
        return logits, ce


@pytest.mark.parametrize('attn,window', [('prefix', -1), ('prefix', 3), ('causal_prefix', 3)])
def test_each_decoding_step_runs_the_training_view_of_its_cut(attn, window):
    """The step that decodes position c sees what training showed a cut at c (mtp_inputs: the
    same ranks, the same window) on the tokens decoded before it: its logits at every position
    it runs equal that view's, so a decoder that ranked or windowed differently fails here."""
    model, x = model_and_batch()
    spy = Recorder(model)
    out, _ = decode_ar_mtp(spy, x, attn, window=window, use_cache=False)
    answer, B, T = x == MASK, x.shape[0], x.shape[1]
    start = int(answer[0].float().argmax())
    assert len(spy.calls) == T - start
    for c, (pos, logits) in zip(range(start, T), spy.calls):
        prefix = 'full' if attn == 'prefix' else 'causal'
        view, mask, _, _ = mtp_inputs(out, answer, torch.full((B, 1), c), window, prefix)
        trained, _ = model(view, attn_mask=mask)
        assert torch.equal(pos[0], torch.arange(min(T, c + (T if window < 0 else window))))
        assert torch.allclose(logits, trained[:, :pos.shape[1]], atol=1e-5), f'step {c}'


class Spy(torch.nn.Module):
    """Records its inputs; the 'cross-entropy' at position p is p, so losses are checkable."""
    def forward(self, x, attn_mask=None, targets=None, is_causal=False, **kw):
        self.x, self.mask = x, attn_mask
        return None, torch.arange(x.shape[1]).float().expand(x.shape)


@pytest.mark.exercise(4)
@pytest.mark.parametrize('window,ntp_only', [(1, False), (3, False), (-1, False), (3, True)])
def test_mtp_loss_and_window(window, ntp_only):
    _, x = model_and_batch(8)
    ids, answer = (torch.from_numpy(a) for a in TASK.encode_batch(generate(TASK, 8, seed=0, workers=1)))
    spy = Spy()
    cfg = ARConfig(mtp_window=window, ntp_only=ntp_only)
    loss, _ = mtp_loss(spy, ids, answer, cfg, torch.Generator().manual_seed(0))
    masked = spy.x == MASK
    W = 1 if ntp_only else (99 if window < 0 else window)
    cut = masked.float().argmax(1)
    # every example weighs the same: the mean over examples of its own mean CE over the window
    per_example = [sum(range(int(cut[b]), min(33, int(cut[b]) + W))) / (min(33, int(cut[b]) + W) - int(cut[b]))
                   for b in range(8)]
    assert loss.item() == pytest.approx(sum(per_example) / 8)
    for b in range(8):                     # masked positions beyond the window: seen by nobody else
        beyond = torch.arange(33) >= cut[b] + (99 if window < 0 else window)
        others = ~torch.eye(33, dtype=torch.bool)
        assert not (spy.mask[b][:, beyond] & others[:, beyond]).any()
        assert (masked[b] == (torch.arange(33) >= cut[b])).all()              # everything after the cut


@pytest.mark.parametrize('q', [0.0, 0.5, 1.0])
def test_teacherless_share_cuts_at_the_answer_start(q):
    """--teacherless=q: a share q of the examples is cut at the answer's first position (the whole
    answer masked), the rest uniformly over the answer; q = 0 draws exactly the paper's cuts."""
    ids, answer = (torch.from_numpy(a).repeat(1000, 1) for a in TASK.encode_batch(generate(TASK, 4, seed=0, workers=1)))
    L = int(answer[0].sum())                                       # 16 answer cells
    spy, cuts = Spy(), {}
    for share in (0.0, q):
        mtp_loss(spy, ids, answer, ARConfig(mtp_window=-1, teacherless=share), torch.Generator().manual_seed(0))
        cuts[share] = (spy.x == MASK).float().argmax(1) - answer.float().argmax(1)
    at_start = (cuts[q] == 0).float().mean().item()
    assert at_start == pytest.approx(q + (1 - q) / L, abs=0.025)   # 4,000 draws: 3 standard errors
    assert cuts[q].min() >= 0 and cuts[q].max() <= L - 1
    if q < 1:                                                      # the rest still reach every cut
        assert set(cuts[q].tolist()) == set(range(L))
    assert torch.equal(cuts[q], cuts[0.0]) == (q == 0)


@pytest.mark.parametrize('window,batch_size', [(-1, 128), (2, 128), (-1, 2), (2, 1)])
def test_window_accuracy_reads_each_latent_guess_at_its_cut(window, batch_size):
    """A fake model that knows the next token and, among the latent positions, only the odd answer
    positions, except on example 0: row c (the cut) must be 1 at position c, 1 / 0 at odd / even
    later positions less the one example, NaN before the cut and beyond the window; the same
    whether the three examples run together or in batches of 2 or 1."""
    ids = torch.tensor([[3, 4, 9, 9, 9, 9, 9], [3, 5, 9, 8, 7, 6, 5], [3, 6, 9, 4, 4, 4, 4]])
    answer = torch.tensor([[False, False, True, True, True, True, True]]).expand(3, -1)

    def fake(x, attn_mask=None):
        example = x[:, 1] - 4                                          # its prompt token: 4, 5 or 6
        cut = (x == MASK).float().argmax(1, keepdim=True)             # first masked position
        pos = torch.arange(7)[None]
        know = (pos == cut) | ((pos - 2) % 2 == 1) & (example[:, None] > 0)
        guess = torch.where(know, ids[example], 15)                    # 15: a wrong token
        assert attn_mask.shape == (len(x), 7, 7) and len(x) <= batch_size
        return torch.nn.functional.one_hot(guess, 16).float(), None

    acc = window_accuracy(fake, ids, answer, window, batch_size=batch_size)
    W = 5 if window < 0 else window
    for c in range(5):
        for p in range(5):
            if p < c or p >= c + W:
                assert math.isnan(acc[c, p])
            else:
                assert acc[c, p].item() == pytest.approx(1 if p == c else 2 / 3 if p % 2 == 1 else 0)


def test_show_draws_each_ar_mtp_step_with_its_latent_guesses(capsys):
    """--show on AR+MTP: one line per answer position, the tokens written so far, this step's token
    in brackets, then one guess per latent position in the window (W - 1, fewer near the end)."""
    import sample
    model, _ = model_and_batch()
    (problem, _), = generate(TASK, 1, seed=3, workers=1)
    sample.show(model, TASK, problem, 'prefix', dict(sample.DECODERS['ar_mtp'][1], method='ar_mtp', window=3), 'cpu')
    lines = capsys.readouterr().out.strip().splitlines()
    out, _ = decode_ar_mtp(model, torch.from_numpy(TASK.encode(problem)[0])[None], 'prefix', window=3)
    written = [TASK.vocab[int(i)] for i in out[0, TASK.prompt_len + 1:]]
    steps = [line for line in lines if line.startswith('step ')]
    assert lines[0] == f'problem: {problem}' and len(steps) == TASK.answer_len == len(written)
    for i, line in enumerate(steps):
        before, new, guesses = re.fullmatch(r'step \d+: (.*?) ?\[(\S+)\] ?(.*)', line).groups()
        assert before.split() == written[:i] and new == written[i]
        assert len(guesses.split()) == min(2, len(written) - i - 1)


def test_show_says_why_a_path_star_answer_fails(capsys):
    """--show's last line: where the task can tell why an answer fails (path-star: the wrong arm,
    steps off the edges), the reason, as `data.py --check` counts it."""
    import sample
    task = get_task('path_star', degree=2, arm_length=3, n_nodes=10)
    torch.manual_seed(0)                                            # an untrained model: a wrong answer
    model = Transformer(ModelConfig(vocab_size=len(task.vocab), block_size=task.seq_len, n_layer=1, n_head=2,
                                    n_embd=32)).eval()
    (problem, _), = generate(task, 1, seed=0, workers=1)
    sample.show(model, task, problem, 'prefix', dict(sample.DECODERS['ar_mtp'][1], method='ar_mtp', window=2), 'cpu')
    last = capsys.readouterr().out.strip().splitlines()[-1]
    answer = last.split(': ', 1)[1]
    why = task.failure(problem, answer)
    assert why not in (None, 'invalid') and last == f'answer is WRONG ({why}): {answer}'


def test_ar_loss_hand_computed():
    ids = torch.tensor([[3, 4, 5, 6]])
    answer = torch.tensor([[False, False, True, True]])
    spy = Spy()
    loss, _ = ar_loss(spy, ids, answer, ARConfig(), None)
    # input positions 0..2 predict tokens 1..3; targets 2 and 3 are answers -> 'CE' at inputs 1, 2
    assert loss.item() == pytest.approx((1 + 2) / 2) and spy.x.shape == (1, 3)


# AR+MTP at W = all learns more slowly: in 300 steps of the preset's batch of 32 it solved none
@pytest.mark.parametrize('window,steps,batch', [(0, 150, 32), (-1, 300, 64)])
def test_tiny_ar_and_ar_mtp_learn(window, steps, batch, tmp_path):
    """Through the same path as the command line: settings -> objective -> train."""
    cfg, _ = settings(['presets/tiny_test.json', f'--out_dir={tmp_path}/out', f'--data_dir={tmp_path}/data',
                       '--layout=prompt', f'--mtp_window={window}', f'--max_iters={steps}', f'--eval_interval={steps}',
                       f'--batch_size={batch}'],
                      ARConfig())
    loss, attn, decoder = objective(cfg)
    assert (attn, decoder['method']) == (('causal', 'ar') if window == 0 else ('prefix', 'ar_mtp'))
    assert decoder.get('window') == (None if window == 0 else window)
    metrics, _ = train(cfg, loss, attn, decoder, quiet=True)
    assert metrics['val_loss'] < 0.7 * math.log(4)        # uniform over the 4 digits: log 4
    assert metrics['val_accuracy'] > 0.02                 # at least 2 of 64 solved; chance ~1e-6
