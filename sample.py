"""
sample.py: every decoder, the latent-token sampler, evaluation and the speed/quality sweeps.

What it teaches: a masked diffusion model commits one (or a few) positions per forward pass,
but every other masked position in that pass is a *latent token*: a joint guess about a token
not decoded yet. `decode_latent` makes their number k a dial. Each step it picks the positions
to decode D and k latent positions L among the masked ones and runs a semi-causal model on
clean + L + D only, ranked so that D sees every clean position and every latent:

    k = 0      -> independent prediction (cheap: only clean + D are processed)
    k = 'all'  -> every remaining masked position is a latent (joint prediction, MDM cost)

Usage:
    python sample.py --ckpt=out/mdlm/ckpt.pt --eval --n=1000
    python sample.py --ckpt=out/scdm/ckpt.pt --eval --n_latent=4
    python sample.py --ckpt=out/scdm/ckpt.pt --sweep_latent=0,1,2,4,8,all --ref_ckpts=out/mdm/ckpt.pt,out/sidm/ckpt.pt
    python sample.py --ckpt=out/scdm/ckpt.pt --input=puzzles.txt --output=answers.txt
    python sample.py --ckpt=out/scdm/ckpt.pt --show --n_latent=4
The last line of --eval is one JSON object (accuracy, n, nfe_per_sample, positions_per_sample,
seconds and the decoder settings).
"""
import dataclasses, json, math, os, sys, time
from dataclasses import dataclass
import numpy as np
import torch
from model import KVCache, attention_mask, autocast, load_checkpoint, parse_settings, pick_device
from tasks import MASK, PAD, SEP, TaskFormatError, get_task, load_splits, read_examples, write_examples


def choose_tokens(logits, temperature, gen):
    """Token and its probability per position. temperature 0 = greedy. Sampling is done in
    float64: in low precision, rare tokens get probability exactly 0 or are over-sampled."""
    logits = logits.double()
    logits[..., [MASK, SEP]] = -math.inf                  # never emit control tokens
    probs = logits.softmax(-1)
    if temperature == 0:
        token = probs.argmax(-1)
    else:
        noisy = (logits / temperature).softmax(-1)
        u = torch.rand(noisy.shape, generator=gen, device=noisy.device, dtype=torch.float64)
        token = (noisy.log() - (-u.clamp_min(1e-30).log()).log()).argmax(-1)     # Gumbel-max
    return token, probs


def score(probs, order, gen):
    """How confident a position is (higher = decode sooner)."""
    if order == 'random':
        return torch.rand(probs.shape[:-1], generator=gen, device=probs.device)
    top2 = probs.topk(2, -1).values
    if order == 'top_prob': return top2[..., 0]
    if order == 'margin': return top2[..., 0] - top2[..., 1]
    if order == 'entropy': return (probs * probs.clamp_min(1e-30).log()).sum(-1)
    raise ValueError(f'unknown order {order!r}; choose random, top_prob, margin or entropy')


def pick_top(scores, allowed, m):
    """Boolean [B, T]: the m highest-scoring allowed positions of each row (fewer if fewer remain)."""
    s = scores.masked_fill(~allowed, -math.inf)
    top = s.topk(min(m, s.shape[1]), -1).indices
    chosen = torch.zeros_like(allowed).scatter_(1, top, True)
    return chosen & allowed


@torch.no_grad()
def decode_mdm(model, x, structure='full', tokens_per_step=1, order='top_prob', temperature=0.0, gen=None):
    """Plain masked-diffusion decoding: every pass sees all positions (full or independent
    attention); commit the `tokens_per_step` best-scoring masked positions. Returns x and stats."""
    x = x.clone()
    B, T = x.shape
    nfe = torch.zeros(B, device=x.device); positions = torch.zeros(B, device=x.device)
    while True:
        masked = x == MASK
        active = masked.any(1)
        if not active.any(): break
        logits, _ = model(x, mask=attention_mask(structure, masked))
        token, probs = choose_tokens(logits, temperature, gen)
        commit = pick_top(score(probs, order, gen), masked, tokens_per_step)
        x = torch.where(commit, token, x)
        nfe += active; positions += active * T
    return x, dict(nfe=nfe, positions=positions)


@torch.no_grad()
def decode_latent(model, x, n_latent=0, policy='uniform', tokens_per_step=1, n_candidates=8,
                  temperature=0.0, gen=None, trace=None):
    """The latent-token sampler for a semi_causal model. Each step, per row:
      uniform:    D = tokens_per_step random masked positions, L = n_latent others at random;
      confidence: L = n_latent random masked positions, C = n_candidates others; every candidate
                  sees clean + L (equal ranks do not see each other), D = the most confident of C.
    The pass runs on clean + L + D (or C) *only*: the other masked positions are dropped, which
    is exact because under semi_causal attention nobody that matters could see them.
    Latents get ranks 0..k-1 in random order, D/C get rank k: D sees all clean and all latents.
    n_latent='all' (or -1) makes every remaining masked position a latent."""
    x = x.clone()
    B, T = x.shape
    dev = x.device
    nfe = torch.zeros(B, device=dev); positions = torch.zeros(B, device=dev)
    while True:
        masked = x == MASK
        remaining = masked.sum(1)
        active = remaining > 0
        if not active.any(): break
        # a random order of the masked positions: its first slots become D / C, the next L
        order = torch.rand(B, T, generator=gen, device=dev).masked_fill(~masked, 2.0).argsort(1).argsort(1)
        n_front = tokens_per_step if policy == 'uniform' else n_candidates
        k_all = n_latent in ('all', -1, None)
        k = (remaining - n_front).clamp(min=0) if k_all else torch.full_like(remaining, int(n_latent))
        front = masked & (order < n_front)
        latent = masked & (order >= n_front) & (order < n_front + k[:, None])
        keep = ~masked | front | latent
        # trim: move kept positions to the front of each row (stable), cut to the longest row
        idx = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :int(keep.sum(1).max())]
        valid = torch.gather(keep, 1, idx)
        x_sub = torch.gather(x, 1, idx)
        masked_sub = torch.gather(masked, 1, idx) & valid
        rank_sub = torch.gather(torch.where(latent, torch.rand(B, T, generator=gen, device=dev),
                                            torch.full((B, T), 2.0, device=dev)), 1, idx)
        mask = attention_mask('semi_causal', masked_sub, rank_sub)
        mask = (mask & valid[:, None, :]) | torch.eye(idx.shape[1], dtype=torch.bool, device=dev)
        logits, _ = model(x_sub, pos=idx, mask=mask)
        token, probs = choose_tokens(logits, temperature, gen)
        front_sub = torch.gather(front, 1, idx) & valid
        if policy == 'uniform':
            commit_sub = front_sub
        elif policy == 'confidence':
            commit_sub = pick_top(score(probs, 'top_prob', gen), front_sub, tokens_per_step)
        else:
            raise ValueError(f'unknown policy {policy!r}; choose uniform or confidence')
        commit = torch.zeros_like(masked).scatter_(1, idx, commit_sub)
        new = torch.zeros_like(x).scatter_(1, idx, token)
        if trace is not None:                              # for --show: what this step did
            trace.append(dict(latent=latent[0].clone(), commit=commit[0].clone(), x=x[0].clone()))
        x = torch.where(commit, new, x)
        nfe += active; positions += active * valid.sum(1)
    return x, dict(nfe=nfe, positions=positions)


@torch.no_grad()
def decode_ar(model, x, temperature=0.0, use_cache=True, gen=None):
    """Left-to-right decoding for a causal model: the logits at position p-1 predict token p.
    Positions that are already clean (the prompt) are fed, not predicted. With use_cache, each
    step runs one new position against the cached keys/values; without, the whole prefix."""
    x = x.clone()
    B, T = x.shape
    start = int((x == MASK).any(0).float().argmax())               # first position to fill
    cache = KVCache(model.cfg.n_layer) if use_cache else None
    positions, nfe = torch.zeros(B, device=x.device), torch.ones(B, device=x.device)
    logits, _ = model(x[:, :start], is_causal=True, cache=cache)
    if cache is not None: cache.commit(start)
    positions += start
    for p in range(start, T):
        token, _ = choose_tokens(logits[:, -1], temperature, gen)
        x[:, p] = torch.where(x[:, p] == MASK, token, x[:, p])
        if p + 1 == T: break
        if cache is not None:
            logits, _ = model(x[:, p:p + 1], pos=torch.full((B, 1), p, device=x.device), cache=cache)
            cache.commit(1); positions += 1
        else:
            logits, _ = model(x[:, :p + 1], is_causal=True); positions += p + 1
        nfe += 1
    return x, dict(nfe=nfe, positions=positions)


@torch.no_grad()
def decode_ar_mtp(model, x, window=-1, structure='prefix', temperature=0.0, use_cache=True, gen=None):
    """AR with latent tokens: left to right, one token per step, with the next `window` positions
    present as MASK latents in the pass (rank = distance from the cut, as in training).
    structure='causal_prefix' (trained with --prefix=causal): the clean prefix never sees the
    latents, so its keys/values are cached and a step runs only the new token + W latents."""
    x = x.clone()
    B, T = x.shape
    start = int((x == MASK).any(0).float().argmax())
    if not (x[:, start:] == MASK).all():
        raise ValueError('AR+MTP decoding needs the whole answer masked (a prompt layout)')
    W = T - start if window in (-1, None) or window <= 0 else window
    dev = x.device
    nfe = torch.zeros(B, device=dev); positions = torch.zeros(B, device=dev)
    cached = use_cache and structure == 'causal_prefix'
    cache = KVCache(model.cfg.n_layer) if cached else None
    if cached and start > 1:                                          # prefill all but the last clean
        model(x[:, :start - 1], is_causal=True, cache=cache); cache.commit(start - 1)
        positions += start - 1
    for c in range(start, T):
        end = min(T, c + W)
        if cached:        # the newest clean token (c-1) and the window c..end-1
            idx = torch.arange(c - 1, end, device=dev).expand(B, -1)
            sub = x[:, c - 1:end]
            masked = sub == MASK
            rank = (idx - c).float()
            n_past = len(cache)
            local = attention_mask(structure, masked, rank, W)            # among the new positions
            mask = torch.cat([torch.ones(B, end - c + 1, n_past, dtype=torch.bool, device=dev), local], 2)
            logits, _ = model(sub, pos=idx, mask=mask, cache=cache)
            cache.commit(1)
            pred = logits[:, 1]
        else:             # the whole sequence, positions beyond the window masked and unseen
            masked = x == MASK
            rank = (torch.arange(T, device=dev) - c).float().expand(B, -1)
            logits, _ = model(x, mask=attention_mask(structure, masked, rank, W))
            pred = logits[:, c]
            idx = x
        token, _ = choose_tokens(pred, temperature, gen)
        x[:, c] = token
        nfe += 1; positions += idx.shape[1]
    return x, dict(nfe=nfe, positions=positions)


def default_decoder(structure):
    """What training-time evaluation uses: one token per step, most confident first."""
    if structure == 'semi_causal':
        return dict(method='latent', n_latent='all', policy='confidence')
    return dict(method='mdm', order='top_prob')


@torch.no_grad()
def evaluate(model, task, examples, structure, decoder=None, batch_size=256, device='cpu',
             dtype='float32', seed=0, return_answers=False):
    """Decode every example and check it with the task's verifier (any valid answer counts)."""
    decoder = dict(decoder or default_decoder(structure))
    method = decoder.pop('method')
    fn = {'mdm': decode_mdm, 'latent': decode_latent, 'ar': decode_ar, 'ar_mtp': decode_ar_mtp}[method]
    if method in ('mdm', 'ar_mtp'): decoder.setdefault('structure', structure)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    answers, nfe, positions = [], 0.0, 0.0
    t0 = time.time()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        x = torch.from_numpy(np.stack([task.encode(p)[0] for p, _ in chunk])).to(device)
        with autocast(device, dtype):
            out, stats = fn(model, x, gen=gen, **decoder)
        answers += [task.decode_answer(row) for row in out.cpu().numpy()]
        nfe += float(stats['nfe'].sum()); positions += float(stats['positions'].sum())
    seconds = time.time() - t0
    model.train(was_training)
    valid = [task.verify(p, a) for (p, _), a in zip(examples, answers)]
    n = max(len(examples), 1)
    result = dict(accuracy=sum(valid) / n, n=len(examples), nfe_per_sample=nfe / n,
                  positions_per_sample=positions / n, seconds=seconds, seconds_per_sample=seconds / n,
                  method=method, **{k: v for k, v in decoder.items()})
    if return_answers:
        result['answers'], result['valid'] = answers, valid
    return result


# ----------------------------------------------------------------------------------------------
# Command line: --eval, --sweep_latent / --sweep_window, --input/--output, --show

@dataclass
class SampleConfig:
    ckpt: str = 'out/mdlm/ckpt.pt'
    eval: bool = False
    show: bool = False
    input: str = ''                  # a file in the task's standard format
    output: str = ''                 # where to write the answers (same format)
    skip_bad: bool = False           # skip and report malformed input lines instead of stopping
    n: int = 1000                    # test examples to decode
    split: str = 'test'
    method: str = 'auto'             # auto (from the checkpoint) | mdm | latent | ar | ar_mtp
    n_latent: str = ''               # latent sampler: an int or 'all' (semi_causal models only)
    policy: str = 'uniform'          # latent sampler: uniform | confidence
    n_candidates: int = 8
    tokens_per_step: int = 1
    order: str = 'top_prob'          # mdm: random | top_prob | margin | entropy
    temperature: float = 0.0
    window: int = 0                  # ar_mtp: latent window at inference (0 = as trained)
    use_cache: bool = True           # ar / ar_mtp with a causal prefix
    sweep_latent: str = ''           # e.g. 0,1,2,4,8,all
    sweep_window: str = ''           # e.g. 1,2,4,8 (AR+MTP)
    ref_ckpts: str = ''              # comma-separated MDM/SIDM checkpoints drawn as reference lines
    bench_cache: bool = False        # time cached vs uncached decoding (and vs --ref_ckpts) in one run
    results: str = ''                # sweep output prefix (default: next to the checkpoint)
    batch_size: int = 256
    device: str = 'auto'
    dtype: str = 'float32'
    seed: int = 0


def decoder_for(ckpt, cfg, structure):
    """The decoder settings for this checkpoint and these flags, with clear errors."""
    method = cfg.method
    if method == 'auto':
        method = {'full': 'mdm', 'independent': 'mdm', 'semi_causal': 'latent', 'causal': 'ar'}.get(structure, 'ar_mtp')
    if cfg.n_latent and structure != 'semi_causal':
        raise SystemExit(f'error: --n_latent needs a semi_causal model; {cfg.ckpt} is {structure!r}')
    if method == 'mdm':
        if structure not in ('full', 'independent', 'semi_causal'):
            raise SystemExit(f'error: mdm decoding needs a diffusion model; this one is {structure!r}')
        return dict(method='mdm', structure=structure, tokens_per_step=cfg.tokens_per_step,
                    order=cfg.order, temperature=cfg.temperature)
    if method == 'latent':
        if structure != 'semi_causal':
            raise SystemExit(f'error: the latent sampler needs a semi_causal model; this one is {structure!r}')
        k = cfg.n_latent or 'all'
        return dict(method='latent', n_latent=k if k == 'all' else int(k), policy=cfg.policy,
                    tokens_per_step=cfg.tokens_per_step, n_candidates=cfg.n_candidates, temperature=cfg.temperature)
    if method == 'ar':
        if structure != 'causal':
            raise SystemExit(f'error: ar decoding needs a causal model; this one is {structure!r}')
        return dict(method='ar', temperature=cfg.temperature, use_cache=cfg.use_cache)
    if structure not in ('prefix', 'causal_prefix'):
        raise SystemExit(f'error: ar_mtp decoding needs an AR+MTP model; this one is {structure!r}')
    return dict(method='ar_mtp', window=cfg.window or ckpt['train_config']['mtp_window'],
                temperature=cfg.temperature, use_cache=cfg.use_cache)


def show(model, task, problem, decoder, device):
    """Print one example being decoded step by step: '*' latent cells, '.' other masked cells."""
    x = torch.from_numpy(task.encode(problem)[0])[None].to(device)
    trace = []
    if decoder['method'] == 'latent':
        settings = {k: v for k, v in decoder.items() if k != 'method'}
        out, _ = decode_latent(model, x, trace=trace, gen=torch.Generator(device=device).manual_seed(0), **settings)
    else:
        raise SystemExit('error: --show draws the latent sampler; use a semi_causal checkpoint')
    start = task.prompt_len + 1
    for step, t in enumerate(trace):
        now = t['x'].clone(); now[t['commit']] = out[0][t['commit']]
        cells = [task.vocab[int(i)] if int(i) > SEP else '.' for i in now[start:]]
        marks = {p - start: '*' for p in torch.nonzero(t['latent']).flatten().tolist()}
        new = [p - start for p in torch.nonzero(t['commit']).flatten().tolist()]
        print(f'step {step + 1}: decode {", ".join(f"cell {c} = {cells[c]}" for c in new)}; '
              f'{len(marks)} latent tokens (*), {int((t["x"] == MASK).sum()) - len(new) - len(marks)} other masked (.)')
        if task.name.startswith('sudoku'):
            print('\n'.join(task.grid(cells, marks)), end='\n\n')
        else:
            print(''.join(marks.get(i, c) for i, c in enumerate(cells)), end='\n\n')
    answer = task.decode_answer(out[0].cpu().numpy())
    print(f'answer {"verifies" if task.verify(problem, answer) else "is WRONG"}: {answer}')


COST_COLUMNS = ('accuracy', 'nfe_per_sample', 'positions_per_sample', 'seconds_per_sample')


def sweep(model, ckpt, task, examples, cfg, device):
    """The paper's Figure 1: accuracy and cost against the number of latent tokens k (or the AR
    window W), with MDM/SIDM reference lines. Writes <prefix>.csv, .json and (with matplotlib) .png."""
    structure = ckpt['structure']
    name, values = ('n_latent', cfg.sweep_latent) if cfg.sweep_latent else ('window', cfg.sweep_window)
    rows = []
    for v in values.split(','):
        dec = decoder_for(ckpt, dataclasses.replace(cfg, n_latent=v if name == 'n_latent' else '',
                                                    window=int(v) if name == 'window' else 0), structure)
        r = evaluate(model, task, examples, structure, dec, cfg.batch_size, device, cfg.dtype, cfg.seed)
        rows.append(dict(k=v, **{c: r[c] for c in COST_COLUMNS}))
        print(f'{name}={v:>4}: accuracy {r["accuracy"]:.1%}, {r["positions_per_sample"]:.0f} positions/sample, '
              f'{1000 * r["seconds_per_sample"]:.1f} ms/sample')
    refs = []
    for path in filter(None, cfg.ref_ckpts.split(',')):
        ref_model, ref_ckpt = load_checkpoint(path, device)
        if ref_ckpt['task_config'] != ckpt['task_config']:
            raise SystemExit(f'error: reference {path} was trained on another task')
        dec = dict(method='mdm', order='random' if cfg.policy == 'uniform' else 'top_prob')
        r = evaluate(ref_model, task, examples, ref_ckpt['structure'], dec, cfg.batch_size, device, cfg.dtype, cfg.seed)
        refs.append(dict(k=ref_ckpt['structure'], **{c: r[c] for c in COST_COLUMNS}))
        print(f'reference {ref_ckpt["structure"]} ({dec["order"]} order): accuracy {r["accuracy"]:.1%}')
    prefix = cfg.results or os.path.join(os.path.dirname(cfg.ckpt), f'sweep_{name}')
    with open(prefix + '.csv', 'w') as f:
        f.write('k,accuracy,nfe_per_sample,positions_per_sample,seconds_per_sample\n')
        for r in rows + refs:
            f.write(','.join(str(r[c]) for c in ('k',) + COST_COLUMNS) + '\n')
    with open(prefix + '.json', 'w') as f:
        json.dump(dict(task=ckpt['task_config'], sweep=name, policy=cfg.policy, n=len(examples), rows=rows, references=refs), f, indent=1)
    plot_sweep(rows, refs, name, prefix + '.png')
    return rows, refs


def plot_sweep(rows, refs, name, path):
    try:
        import matplotlib; matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('(matplotlib not installed: no figure)'); return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    acc = [100 * r['accuracy'] for r in rows]
    for ax, x, label in zip(axes, [list(range(len(rows))), [r['positions_per_sample'] for r in rows],
                                   [1000 * r['seconds_per_sample'] for r in rows]],
                            [name, 'positions processed per sample', 'ms per sample']):
        ax.plot(x, acc, 'o-', color='C0', label='semi-causal' if name == 'n_latent' else 'AR+MTP')
        for i, ref in enumerate(refs):
            ax.axhline(100 * ref['accuracy'], ls='--', color=f'C{i + 1}', label=ref['k'])
        ax.set_xlabel(label); ax.set_ylabel('accuracy (%)'); ax.grid(alpha=0.3)
    axes[0].set_xticks(range(len(rows)), [r['k'] for r in rows])
    axes[0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)
    print(f'wrote {path}')


def bench_cache(model, ckpt, task, examples, cfg, device):
    """Cached vs uncached decoding of one checkpoint, and (optionally) against reference
    checkpoints with their own decoders (e.g. full-prefix AR+MTP), in one run: ratios, not times."""
    decoder = decoder_for(ckpt, cfg, ckpt['structure'])
    runs = [('cached', model, ckpt, dict(decoder, use_cache=True)), ('uncached', model, ckpt, dict(decoder, use_cache=False))]
    for path in filter(None, cfg.ref_ckpts.split(',')):
        m, c = load_checkpoint(path, device)
        runs.append((f'{path} ({c["structure"]})', m.eval(), c, dict(decoder_for(c, dataclasses.replace(cfg, n_latent=''), c['structure']), use_cache=False)))
    results = {}
    for name, m, c, dec in runs:
        evaluate(m, task, examples[:8], c['structure'], dec, cfg.batch_size, device, cfg.dtype)     # warm-up
        results[name] = evaluate(m, task, examples, c['structure'], dec, cfg.batch_size, device, cfg.dtype, cfg.seed)
    base = results['cached']
    for name, r in results.items():
        print(f'{name:40s} accuracy {r["accuracy"]:6.1%}  {1000 * r["seconds_per_sample"]:7.2f} ms/sample  '
              f'{r["positions_per_sample"]:7.0f} positions/sample  speed-up of cached: {r["seconds"] / base["seconds"]:.2f}x')
    print(json.dumps({name: {k: r[k] for k in ('accuracy', 'seconds', 'positions_per_sample')} for name, r in results.items()}))


def main(argv):
    cfg = parse_settings(SampleConfig(), argv)
    device = pick_device(cfg.device)
    model, ckpt = load_checkpoint(cfg.ckpt, device)
    model.eval()
    task = get_task(**ckpt['task_config'])
    structure = ckpt['structure']
    decoder = decoder_for(ckpt, cfg, structure)
    if cfg.input:
        try:
            read = read_examples(task, cfg.input, skip_bad=cfg.skip_bad)
        except (TaskFormatError, OSError) as e:
            raise SystemExit(f'error: {e} (the checkpoint is for {task.name} {task.options})')
        examples, errors = read if cfg.skip_bad else (read, [])
        for e in errors: print('skipped', e)
    else:
        tc = ckpt['train_config']
        splits = load_splits(task, tc['n_train'], tc['n_val'], tc['n_test'], tc['data_seed'], tc['data_dir'])
        if cfg.split not in splits:
            raise SystemExit(f'error: --split must be train, val or test')
        examples = splits[cfg.split][:cfg.n]
    if cfg.show:
        return show(model, task, examples[0][0], decoder, device)
    if cfg.bench_cache:
        return bench_cache(model, ckpt, task, examples, cfg, device)
    if cfg.sweep_latent or cfg.sweep_window:
        sweep(model, ckpt, task, examples, cfg, device); return
    result = evaluate(model, task, examples, structure, decoder, cfg.batch_size, device, cfg.dtype, cfg.seed,
                      return_answers=True)
    answers, valid = result.pop('answers'), result.pop('valid')
    if cfg.output:
        write_examples(task, cfg.output, [(p, a) for (p, _), a in zip(examples, answers)])
        print(f'wrote {len(answers)} answers to {cfg.output}')
    print(f'{task.name} {task.options}: {sum(valid)} of {len(valid)} solved ({result["accuracy"]:.1%}), '
          f'{result["nfe_per_sample"]:.1f} forward passes and {result["positions_per_sample"]:.0f} positions '
          f'per sample, {result["seconds"]:.1f}s')
    print(json.dumps(dict(result, ckpt=cfg.ckpt, task=task.config())))


if __name__ == '__main__':
    main(sys.argv[1:])
