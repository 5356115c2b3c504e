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
    fn = {'mdm': decode_mdm, 'latent': decode_latent}[method]
    if method == 'mdm': decoder.setdefault('structure', structure)
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
