"""
sample.py: every decoder, the latent-token sampler, and evaluation against the task's verifier.

What it teaches: a masked diffusion model commits one (or a few) positions per forward pass,
but every other masked position in that pass is a *latent token*: a joint guess about a token
not decoded yet. `decode_latent` makes their number k a dial. Each step it picks the positions
to decode D and k latent positions L among the masked ones and runs a semi-causal model on
clean + L + D only, ranked so that D sees every clean position and every latent:

    k = 0      -> independent prediction (cheap: only clean + D are processed)
    k = 'all'  -> every remaining masked position is a latent (joint prediction, MDM cost)

By default a checkpoint is decoded the way training evaluated it (stored in the checkpoint);
any decoder setting given on the command line overrides that.

    python sample.py --ckpt=out/mdlm/ckpt.pt --n=500                      # solve test puzzles
    python sample.py --ckpt=out/mdlm/ckpt.pt --n_latent=4 --order=random  # the paper's uniform order
    python sample.py --ckpt=out/mdlm/ckpt.pt --show --n_latent=3          # watch it decode
    python sample.py --ckpt=out/ar_mtp/ckpt.pt --show                     # AR+MTP: each step's latent guesses
    python sample.py --ckpt=out/mdm/ckpt.pt --threshold=0.999             # several tokens per pass
    python sample.py --ckpt=out/mdlm/ckpt.pt --n_latent=0 --cache_refresh=-1 --refresh_below=0.999   # cached, refreshed on doubt
    python sample.py --ckpt=out/mdlm/ckpt.pt --input=puzzles.txt --output=answers.txt
    echo '.2..5..4...66.21.5....3....5.3.1....' | python sample.py --input=- --show   # a puzzle of your own
The last line printed is one JSON object (accuracy, n, nfe_per_sample, positions_per_sample,
seconds and the decoder settings). Sweeps of k and speed benchmarks live in reproduce.py.
"""
import json, math, sys, time
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from model import KVCache, attention_mask
from data import SPLITS, TaskFormatError, check_writable, load_splits, read_examples, write_examples
from tasks import MASK, SEP, get_task
from configurator import parse_settings, refuse_unused
from utils import autocast, load_checkpoint, resolve_system


def wide_float(device):
    """float64, where probabilities are computed and sampled (in low precision, rare tokens get
    probability exactly 0 or are over-sampled); float32 on Apple's MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == 'mps' else torch.float64


def choose_tokens(logits, temperature, gen):
    """Token and its probability per position. temperature 0 = greedy. Computed in wide_float."""
    logits = logits.to(wide_float(logits.device))
    logits[..., [MASK, SEP]] = -math.inf                  # never emit control tokens
    probs = logits.softmax(-1)
    if temperature == 0:
        token = probs.argmax(-1)
    else:
        noisy = (logits / temperature).softmax(-1)
        u = torch.rand(noisy.shape, generator=gen, device=noisy.device, dtype=noisy.dtype)
        token = (noisy.log() - (-u.clamp_min(1e-30).log()).log()).argmax(-1)     # Gumbel-max
    return token, probs


CONFIDENCE_ORDERS = ('top_prob', 'margin', 'entropy')     # the orders score() ranks by confidence
COMMIT_ORDERS = ('random',) + CONFIDENCE_ORDERS             # every --order
LATENT_RANKS = ('random', 'confidence')                     # every --latent_ranks (decode_latent)
LATENT_ALL = ('all', -1, None)                              # n_latent values meaning every masked position


def score(probs, order, gen):
    """How confident a position is (higher = decode sooner)."""
    if order == 'random':
        return torch.rand(probs.shape[:-1], generator=gen, device=probs.device)
    top2 = probs.topk(2, -1).values
    if order == 'top_prob': return top2[..., 0]
    if order == 'margin': return top2[..., 0] - top2[..., 1]
    if order == 'entropy': return (probs * probs.clamp_min(1e-30).log()).sum(-1)
    raise ValueError(f'unknown order {order!r}; choose {", ".join(COMMIT_ORDERS)}')


def pick_top(scores, allowed, m):
    """Boolean [B, T]: the m highest-scoring allowed positions of each row (fewer if fewer remain)."""
    s = scores.masked_fill(~allowed, -math.inf)
    top = s.topk(min(m, s.shape[1]), -1).indices
    chosen = torch.zeros_like(allowed).scatter_(1, top, True)
    return chosen & allowed


def random_subset(allowed, m, gen):
    """Boolean [B, T]: m random allowed positions per row (all of them if m <= 0 or fewer remain)."""
    if m <= 0:
        return allowed
    return pick_top(torch.rand(allowed.shape, generator=gen, device=allowed.device), allowed, m)


def refresh_due(cache_refresh, n_pass):
    """Does pass n_pass run every position and keep fresh keys/values? (--cache_refresh=r: 0 =
    no cache, so every pass; r > 0: every r-th pass; -1: the first pass only.)"""
    return cache_refresh == 0 or n_pass == 0 or (cache_refresh > 0 and n_pass % cache_refresh == 0)


def trimmed_mask(mask, valid, visible=None):
    """The attention mask of a pass run on some positions, padded per row (valid [B, T'] False
    on padding): `mask` over them (None: all see all), no query seeing padding, every query seeing
    itself (a padding query may see nothing at all, and attention over no key gives NaN; padding
    outputs are never used), and, with a cache, the kept keys first (visible [B, K]: True where a
    kept key may be seen; clean positions, which every query sees)."""
    mask = valid[:, None, :] if mask is None else mask & valid[:, None, :]
    mask = mask | torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    if visible is not None:
        mask = torch.cat([visible[:, None, :].expand(-1, valid.shape[1], -1), mask], 2)
    return mask


def pad_to(t, n, dim):
    """t padded with zeros (False if bool) along dim to length n; t itself, not a copy, if as long."""
    extra = n - t.shape[dim]
    return t if extra == 0 else F.pad(t, (0, 0) * (t.dim() - 1 - dim) + (0, extra))


class CleanCache(KVCache):
    """The keys/values a diffusion decoder keeps of clean positions, and which ones they are:
    held [B, T] the positions whose keys/values are kept (a pass on the cache does not run them);
    visible [B, K] True for the kept keys a query may see, one per cache slot (False on the
    padding that evens the rows out)."""
    def __init__(self, n_layer, B, T, device):
        super().__init__(n_layer)
        self.held = torch.zeros(B, T, dtype=torch.bool, device=device)
        self.visible = torch.zeros(B, 0, dtype=torch.bool, device=device)

    def keep(self, idx, valid, clean):
        """After a trimmed pass on idx [B, T'] (valid [B, T'] False on the padding), keep the
        keys/values of the clean positions it ran (clean [B, T]; first in idx) after those kept."""
        n_clean = int(clean.sum(1).max())
        self.commit(n_clean)
        kept = torch.gather(clean, 1, idx[:, :n_clean]) & valid[:, :n_clean]
        self.held = self.held | torch.zeros_like(clean).scatter_(1, idx[:, :n_clean], kept)
        self.visible = torch.cat([self.visible, kept], 1)

    def replace_rows(self, rows, other):
        """Batch rows `rows` take everything `other` (a cache of those rows only) keeps. The
        shorter of the two is padded to the longer first, the padding never visible."""
        n = max(len(self), len(other))
        for mine, theirs in ((self.k, other.k), (self.v, other.v)):
            for i in range(len(mine)):
                mine[i] = pad_to(mine[i], n, 2)
                mine[i][rows] = pad_to(theirs[i], n, 2)
        self.held[rows] = other.held
        self.visible = pad_to(self.visible, n, 1)
        self.visible[rows] = pad_to(other.visible, n, 1)


BROKEN_COMMIT = ('a decoding pass committed a position that was not masked, or none in a row that still had '
                 'some: the decoder would overwrite a given or never finish')


def check_givens_kept(x_in, x):
    """A decoder commits masked positions only: one (or an exercise's commit rule) that committed a
    clean one would have overwritten a given. Checked once, at the end. (Committing none in a row
    would loop forever: the decoders stop after as many passes as positions.)"""
    if ((x != x_in) & (x_in != MASK)).any():
        raise RuntimeError(BROKEN_COMMIT)


def commit_rule(probs, candidates, order, tokens_per_step, threshold, gen):
    """Which candidates to commit this pass: the `tokens_per_step` best by `order`, plus, with a
    threshold, every candidate whose top probability is at least it (Fast-dLLM's rule)."""
    # EXERCISE 7: the best tokens_per_step candidates, plus every candidate at least threshold sure
    commit = pick_top(score(probs, order, gen), candidates, tokens_per_step)
    if threshold > 0:
        commit |= candidates & (probs.amax(-1) >= threshold)
    return commit
    # END EXERCISE 7


@torch.no_grad()
def decode_mdm(model, x, attn='full', order='top_prob', tokens_per_step=1, n_candidates=0, threshold=0.0,
               temperature=0.0, cache_refresh=0, gen=None, trace=None):
    """Plain masked-diffusion decoding: every pass sees all positions (full, independent or
    masked_full attention). Candidates are all masked positions (or `n_candidates` random ones,
    to match the latent sampler's confidence rule); commit the `tokens_per_step` best by `order`
    (and, with a threshold, every candidate at least that confident). Returns x and per-row stats.

    cache_refresh=r (Fast-dLLM's approximate cache for MDMs): a pass that runs every position
    (every r-th pass; -1: the first only) keeps the keys/values of the positions clean in it; the
    passes in between run only the other positions (masked, or committed since) against those
    kept keys/values, which miss what changed since they were computed: the cells committed
    since and, under full attention, where clean cells see masked ones, every masked cell's
    state. 0 = no cache. r = 1 is the uncached decoder exactly: every pass runs everything."""
    x_in, x = x, x.clone()
    B, T = x.shape
    nfe = torch.zeros(B, device=x.device); positions = torch.zeros(B, device=x.device)
    cache, n_pass = None, 0
    while True:
        masked = x == MASK
        active = masked.any(1)
        if not active.any(): break
        if n_pass == T: raise RuntimeError(BROKEN_COMMIT)     # each pass commits one: T passes at most
        refresh = refresh_due(cache_refresh, n_pass)
        if refresh:
            cache = CleanCache(model.cfg.n_layer, B, T, x.device) if cache_refresh != 0 else None
            logits, _ = model(x, attn_mask=attention_mask(attn, masked), cache=cache)
            if cache is not None:       # slot i holds position i; masked positions' keys/values are
                cache.commit(T)         # kept too, never seen (dropping them measured no faster on 9x9)
                cache.held, cache.visible = ~masked, ~masked
            ran = torch.full((B,), T, device=x.device)
        else:   # the positions not kept, in order, padded; they see the kept keys and each other
            held = cache.held
            idx = held.to(torch.int8).argsort(dim=1, stable=True)[:, :int((~held).sum(1).max())]
            valid = ~torch.gather(held, 1, idx)
            attn_mask = trimmed_mask(attention_mask(attn, torch.gather(masked, 1, idx) & valid), valid, cache.visible)
            sub_logits, _ = model(torch.gather(x, 1, idx), pos=idx, attn_mask=attn_mask, cache=cache)
            logits = sub_logits.new_zeros(B, T, sub_logits.shape[-1]).scatter_(   # kept rows: never candidates
                1, idx[..., None].expand(-1, -1, sub_logits.shape[-1]), sub_logits)
            ran = valid.sum(1)
        n_pass += 1
        token, probs = choose_tokens(logits, temperature, gen)
        candidates = random_subset(masked, n_candidates, gen)
        commit = commit_rule(probs, candidates, order, tokens_per_step, threshold, gen)
        if trace is not None:       # for --show: the latent tokens are the masked cells the decoded ones see
            sees = attention_mask(attn, masked[:1])
            seen = masked[0] if sees is None else sees[0][commit[0]].any(0)
            trace.append(dict(latent=masked[0] & ~commit[0] & seen, commit=commit[0].clone(), x=x[0].clone(),
                              guess=token[0].clone(), sure=probs[0].amax(-1),
                              cache=None if cache is None else 'refreshed' if refresh else 'kept'))
        x = torch.where(commit, token, x)
        nfe += active; positions += active * ran
    check_givens_kept(x_in, x)
    return x, dict(nfe=nfe, positions=positions)


def trimmed_pass(model, x, keep, masked, rank, attn, cache=None):
    """One pass of the latent sampler on the positions `keep` [B, T] only, clean ones first, padded
    to the longest row (exact: under semi-causal attention no position in the pass could see the
    others); with a cache (a CleanCache), every query also sees the visible kept clean keys.
    Returns idx [B, T'] (the positions run), valid [B, T'] (False on the padding) and the logits."""
    # EXERCISE 3: trim the pass to `keep` (clean + L + D). idx [B, T'] the kept positions of each
    # row, clean ones first, padded to the longest row; valid [B, T'] False on the padding
    idx = (2 * (~keep).to(torch.int8) + masked.to(torch.int8)).argsort(dim=1, stable=True)
    idx = idx[:, :int(keep.sum(1).max())]
    valid = torch.gather(keep, 1, idx)
    # END EXERCISE 3
    masked_sub = torch.gather(masked, 1, idx) & valid
    attn_mask = trimmed_mask(attention_mask(attn, masked_sub, torch.gather(rank, 1, idx)), valid,
                             None if cache is None else cache.visible)
    logits, _ = model(torch.gather(x, 1, idx), pos=idx, attn_mask=attn_mask, cache=cache)
    return idx, valid, logits


def rerun_fresh(model, x, rows, keep, masked, rank, attn, cache):
    """Refresh on doubt: the pass of batch rows `rows` (on `keep` [B, T]) run again, every clean
    position fresh; their fresh clean keys/values replace the stale ones in the cache. Returns
    this pass's idx, valid and logits."""
    fresh = CleanCache(model.cfg.n_layer, len(rows), x.shape[1], x.device)
    idx, valid, logits = trimmed_pass(model, x[rows], keep[rows], masked[rows], rank[rows], attn, fresh)
    fresh.keep(idx, valid, ~masked[rows])
    cache.replace_rows(rows, fresh)
    return idx, valid, logits


def pass_result(logits, idx, valid, front, order, tokens_per_step, threshold, temperature, gen):
    """A latent-sampler pass's outcome at every position [B, T]: commit (the ones to commit now),
    new (each run position's token) and sure (its top probability, at least 1/V where the pass ran
    and 0 elsewhere, so sure > 0 says which positions it ran)."""
    token, probs = choose_tokens(logits, temperature, gen)
    front_sub = torch.gather(front, 1, idx) & valid
    if order == 'random':
        commit_sub = front_sub                        # D was chosen before the pass
    else:
        commit_sub = commit_rule(probs, front_sub, order, tokens_per_step, threshold, gen)
    full = lambda sub: torch.zeros(front.shape, dtype=sub.dtype, device=sub.device).scatter_(1, idx, sub)
    return full(commit_sub), full(token), full(probs.amax(-1).masked_fill(~valid, 0))   # padding: 0


def choose_positions(masked, order, n_latent, tokens_per_step, n_candidates, gen):
    """One pass's positions per row [B, T]: front (D for order='random', else the candidates C),
    latent (L) and rank. A random order of the masked positions; its first slots become D / C, the
    next k become L (k = n_latent, or every remaining one for 'all'; with n_candidates=0, C = every
    masked position outside L, at least one). Ranks: latents U(0,1), D / C 2.0, above every latent,
    so D sees every latent and D / C positions do not see each other (equal ranks)."""
    B, T = masked.shape
    dev = masked.device
    remaining = masked.sum(1)
    k_all = n_latent in LATENT_ALL
    slot = torch.rand(B, T, generator=gen, device=dev).masked_fill(~masked, 2.0).argsort(1).argsort(1)
    n_front = torch.full_like(remaining, tokens_per_step if order == 'random' else n_candidates)
    k = (remaining - n_front).clamp(min=0) if k_all else torch.full_like(remaining, int(n_latent))
    if order != 'random' and n_candidates <= 0:           # C = all but L, at least one
        k = k.minimum(remaining - 1); n_front = remaining - k
    front = masked & (slot < n_front[:, None])
    latent = masked & (slot >= n_front[:, None]) & (slot < (n_front + k)[:, None])
    rank = torch.where(latent, torch.rand(B, T, generator=gen, device=dev), torch.full((B, T), 2.0, device=dev))
    return front, latent, rank


def chain_by_confidence(rank, latent, last_sure):
    """latent_ranks='confidence' (ours): the latent chain easiest first. The latents are reranked by
    last_sure [B, T], the top probability their cell had the last time it ran in a pass (0 if it
    has not run yet), the surest lowest, ties in the random order `rank` holds; so the surest
    guesses are made first and every later latent and D read them (on 6x6 Sudoku, random order,
    k = all: 4 to 7 points more solved; results/studies.md, "The latent chain's order")."""
    T = rank.shape[1]
    # EXERCISE 9: the latent chain easiest first: rerank the latents by last_sure [B, T], the
    # surest lowest, ties in the random order `rank` already holds; draw nothing from gen
    chain = rank.argsort(1)                          # each row's positions in the random order
    chain = chain.gather(1, (-last_sure.gather(1, chain)).argsort(dim=1, stable=True))
    rank = torch.where(latent, chain.argsort(1).float() / T, rank)   # distinct, in [0, 1)
    # END EXERCISE 9
    return rank


def check_latent_settings(attn, n_latent, order, n_candidates, threshold, cache_refresh, refresh_below, latent_ranks):
    """A clear error for a combination of decode_latent's settings that it cannot honour."""
    if order == 'random' and threshold > 0:
        raise ValueError(f'a threshold needs a confidence order ({", ".join(CONFIDENCE_ORDERS)}), not random')
    if refresh_below > 0 and (cache_refresh == 0 or attn == 'semi_causal_ordered'):
        raise ValueError('refresh_below reruns a pass whose cache is stale: it needs a cache (cache_refresh = -1: '
                         'refreshed on doubt only), and a semi_causal_ordered model\'s cache is never stale')
    if order != 'random' and n_candidates <= 0 and n_latent in LATENT_ALL:
        raise ValueError("n_candidates=0 makes every masked position outside the latents a candidate, so "
                         "n_latent='all' would leave none to decode: give n_latent a count")
    if latent_ranks not in LATENT_RANKS:
        raise ValueError(f'latent_ranks must be one of {", ".join(LATENT_RANKS)}, not {latent_ranks!r}')


@torch.no_grad()
def decode_latent(model, x, attn='semi_causal', n_latent=0, order='random', tokens_per_step=1, n_candidates=8,
                  threshold=0.0, temperature=0.0, cache_refresh=0, refresh_below=0.0, latent_ranks='random', gen=None,
                  trace=None):
    """The latent-token sampler for a semi_causal (or semi_causal_ordered) model. Each step, per row
    (choose_positions):
      order='random' (the paper's uniform order): D = tokens_per_step random masked positions,
                  L = n_latent others at random;
      order='top_prob' (or margin, entropy): L = n_latent random masked positions, candidates C =
                  n_candidates others (0: all the others, at least one; then n_latent must be a
                  count); every candidate sees clean + L, and D = the best of C.
                  (In the authors' code candidate i also sees the candidates before it; here
                  every candidate sees exactly the same k latents, so they are compared fairly.)
    The pass runs on clean + L + D (or C) *only*: the other masked positions are dropped, which
    is exact because under semi_causal attention no position in the pass could see them.
    Ranks: D / C above every latent, so D sees all clean positions and all latents; the latents
    form a chain (each sees those ranked below it), in random order, or easiest first with
    latent_ranks='confidence' (ours, chain_by_confidence).
    n_latent='all' (or -1) makes every remaining masked position a latent. A count is an upper
    bound: once fewer masked positions than it remain besides D (or C), all of them are latents,
    so a count at least the answer's length decodes as 'all' does.

    cache_refresh (ours, an approximation in the spirit of Fast-dLLM's cache): clean positions see
    only clean positions, so their keys/values change only when a token is committed. With
    cache_refresh=r > 0, a pass that runs every clean position (every r-th pass) keeps their
    keys/values; the passes in between run only the positions committed since, L and D (or C),
    against those kept keys/values, which miss what the newer tokens would have changed.
    0 = no cache (exact); -1 = keys/values of the first pass kept to the end.
    refresh_below=tau > 0 (ours: refresh on doubt) with a cache: a row about to commit a token less
    sure than tau runs that pass again with every clean position fresh, commits from it, and keeps
    its fresh keys/values; the keys/values of the positions committed since are kept once run. Most
    commits of a trained model are near certain, and a stale cache rarely makes a wrong one near
    certain, so this refreshes where it matters: on 9x9 Sudoku at k = 0 it runs fewer positions
    than r = 4 and loses no more than r = 2 (README, "Benchmarks"). The rerun counts as a pass.
    A semi_causal_ordered model (ours) ranks clean positions by when they were decoded (givens
    first), and a clean position sees only those ranked no later: nothing decoded later changes
    its keys/values, so with any cache_refresh != 0 each pass appends the keys/values of the
    clean positions it ran to the cache, never recomputes them, and the cache is exact."""
    check_latent_settings(attn, n_latent, order, n_candidates, threshold, cache_refresh, refresh_below, latent_ranks)
    x_in, x = x, x.clone()
    B, T = x.shape
    dev = x.device
    nfe = torch.zeros(B, device=dev); positions = torch.zeros(B, device=dev)
    cache, n_pass = None, 0
    ordered = attn == 'semi_causal_ordered'
    decoded_rank = torch.full((B, T), -1.0, device=dev) if ordered else None   # givens -1, then pass number
    confident = latent_ranks == 'confidence'
    last_sure = torch.zeros(B, T, device=dev) if confident else None   # each cell's top probability the last time it ran
    while True:
        masked = x == MASK
        active = masked.any(1)
        if not active.any(): break
        if n_pass == T: raise RuntimeError(BROKEN_COMMIT)     # each pass commits one: T passes at most
        front, latent, rank = choose_positions(masked, order, n_latent, tokens_per_step, n_candidates, gen)
        if confident:
            rank = chain_by_confidence(rank, latent, last_sure)
        if ordered:                   # clean positions ranked by when they were decoded
            rank = torch.where(masked, rank, decoded_rank)
        # an ordered model's cache is exact: filled on the first pass, then only appended to (r = -1)
        refresh = cache_refresh != 0 and refresh_due(-1 if ordered else cache_refresh, n_pass)
        reuse = cache_refresh != 0 and not refresh
        clean = ~masked & ~cache.held if reuse else ~masked       # the clean positions this pass runs
        if refresh:
            cache = CleanCache(model.cfg.n_layer, B, T, dev)
        # with reuse every query also sees the kept clean keys (clean sees clean)
        idx, valid, logits = trimmed_pass(model, x, clean | front | latent, masked, rank, attn, cache)
        if refresh or (reuse and (ordered or refresh_below > 0)):   # keep the clean positions' keys/values
            cache.keep(idx, valid, clean)
        n_pass += 1
        commit, new, sure = pass_result(logits, idx, valid, front, order, tokens_per_step, threshold,
                                        temperature, gen)
        nfe += active; positions += active * valid.sum(1)
        cache_use = 'refreshed' if refresh else 'kept' if reuse else None     # for --show (row 0)
        if reuse and refresh_below > 0:
            # refresh on doubt (ours): a row about to commit a token less sure than refresh_below
            # runs the pass again, every clean position fresh, and commits from that pass instead
            rows = (active & (commit & (sure < refresh_below)).any(1)).nonzero()[:, 0]
            if len(rows):
                if trace is not None and rows[0] == 0:     # for --show: how sure the pass on the cache was
                    cache_use = ('doubt', float(sure[0][commit[0]].min()))
                idx_r, valid_r, logits_r = rerun_fresh(model, x, rows, ~masked | front | latent, masked, rank,
                                                       attn, cache)
                commit[rows], new[rows], sure[rows] = pass_result(
                    logits_r, idx_r, valid_r, front[rows], order, tokens_per_step, threshold,
                    temperature, gen)
                nfe[rows] += 1; positions[rows] += valid_r.sum(1)
        if confident:                      # remember how sure this pass was of each masked cell it ran
            last_sure = torch.where(masked & (sure > 0), sure.float(), last_sure)
        if trace is not None:                              # for --show: what this step did
            trace.append(dict(latent=latent[0].clone(), commit=commit[0].clone(), x=x[0].clone(), guess=new[0].clone(),
                              sure=sure[0], cache=cache_use))
        x = torch.where(commit, new, x)
        if ordered:   # distinct ranks within a pass too: in training no two clean positions share one
            decoded_rank = torch.where(commit, n_pass + torch.rand(B, T, generator=gen, device=dev), decoded_rank)
    check_givens_kept(x_in, x)
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
def decode_ar_mtp(model, x, attn='prefix', window=-1, temperature=0.0, use_cache=True, gen=None, trace=None):
    """AR with latent tokens: left to right, one token per step, with the next `window` positions
    present as MASK latents in the pass (rank = distance from the cut, as in training).
    Positions beyond the window are seen by no one, so they are not run at all (exact).
    attn='causal_prefix' (trained with --prefix=causal): the clean prefix never sees the
    latents, so its keys/values are cached and a step runs only the new token + W latents."""
    x = x.clone()
    B, T = x.shape
    start = int((x == MASK).any(0).float().argmax())
    if not (x[:, start:] == MASK).all():
        raise ValueError('AR+MTP decoding needs the whole answer masked (a prompt layout)')
    W = T - start if window in (-1, None) or window <= 0 else window
    dev = x.device
    nfe = torch.zeros(B, device=dev); positions = torch.zeros(B, device=dev)
    cache = KVCache(model.cfg.n_layer) if use_cache and attn == 'causal_prefix' else None
    if cache is not None and start > 1:                               # prefill all but the last clean
        model(x[:, :start - 1], is_causal=True, cache=cache); cache.commit(start - 1)
        positions += start - 1
    for c in range(start, T):
        end = min(T, c + W)
        first = c - 1 if cache is not None else 0         # cached: the newest clean token c-1 only
        sub = x[:, first:end]
        pos = torch.arange(first, end, device=dev).expand(B, -1)
        attn_mask = attention_mask(attn, sub == MASK, (pos - c).float(), W)
        if cache is not None:                             # every new position sees the whole cache
            attn_mask = torch.cat([attn_mask.new_ones(B, end - first, len(cache)), attn_mask], 2)
        logits, _ = model(sub, pos=pos, attn_mask=attn_mask, cache=cache)
        if cache is not None: cache.commit(1)
        x[:, c], _ = choose_tokens(logits[:, c - first], temperature, gen)
        if trace is not None:                             # for --show: the latents' guesses (row 0)
            trace.append(dict(pos=c, guess=logits[0, c - first + 1:].argmax(-1)))
        nfe += 1; positions += end - first
    return x, dict(nfe=nfe, positions=positions)


# ----------------------------------------------------------------------------------------------
# One table: how a model with each attention structure is decoded, and the default settings of
# each decoder (what training evaluates with). Command-line settings override them.

ATTN_METHOD = {'full': 'mdm', 'independent': 'mdm', 'masked_full': 'mdm', 'semi_causal': 'latent',
               'semi_causal_ordered': 'latent', 'causal': 'ar', 'prefix': 'ar_mtp', 'causal_prefix': 'ar_mtp'}
DECODERS = {
    'mdm': (decode_mdm, dict(order='top_prob', tokens_per_step=1, n_candidates=0, threshold=0.0, temperature=0.0,
                             cache_refresh=0)),
    'latent': (decode_latent, dict(n_latent='all', order='top_prob', tokens_per_step=1, n_candidates=8,
                                   threshold=0.0, temperature=0.0, cache_refresh=0, refresh_below=0.0,
                                   latent_ranks='random')),
    'ar': (decode_ar, dict(temperature=0.0, use_cache=True)),
    'ar_mtp': (decode_ar_mtp, dict(window=-1, temperature=0.0, use_cache=True)),
}


def default_decoder(attn, window=-1):
    """The decoder training evaluates a model of this attention structure with."""
    method = ATTN_METHOD[attn]
    decoder = dict(method=method, **DECODERS[method][1])
    if method == 'ar_mtp': decoder['window'] = window
    return decoder


@torch.no_grad()
def evaluate(model, task, examples, attn, decoder=None, batch_size=256, device='cpu',
             dtype='float32', seed=0, return_answers=False, progress=False, stoppable=False):
    """Decode every example and check it with the task's verifier (any valid answer counts).
    progress: a bar on stderr while more than one batch is decoded. stoppable: Ctrl-C ends the
    decode at once, and the result is of the batches finished before it (stopped=True)."""
    decoder = dict(decoder or default_decoder(attn))
    method = decoder.pop('method')
    fn = DECODERS[method][0]
    if method != 'ar': decoder['attn'] = attn
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    answers, nfe, positions = [], 0.0, 0.0
    bar = tqdm(total=len(examples), unit='example', desc='decoding', leave=False, dynamic_ncols=True,
               disable=not progress or len(examples) <= batch_size)
    t0, stopped = time.time(), False
    try:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            x = torch.from_numpy(np.stack([task.encode(p)[0] for p, _ in chunk])).to(device)
            with autocast(device, dtype):
                out, stats = fn(model, x, gen=gen, **decoder)
            answers += [task.decode_answer(row) for row in out.cpu().numpy()]
            nfe += float(stats['nfe'].sum()); positions += float(stats['positions'].sum())
            bar.update(len(chunk))
    except KeyboardInterrupt:
        if not stoppable: raise
        stopped, examples = True, examples[:len(answers)]       # the batch under way is dropped
    seconds = time.time() - t0
    bar.close()
    model.train(was_training)
    valid = [task.verify(p, a) for (p, _), a in zip(examples, answers)]
    n = max(len(examples), 1)
    result = dict(accuracy=sum(valid) / n, n=len(examples), nfe_per_sample=nfe / n,
                  positions_per_sample=positions / n, seconds=seconds, seconds_per_sample=seconds / n,
                  method=method, **decoder)
    if stopped: result['stopped'] = True
    if return_answers:
        result['answers'], result['valid'] = answers, valid
    return result


# ----------------------------------------------------------------------------------------------
# Command line

@dataclass
class SampleConfig:
    ckpt: str = 'out/mdlm/ckpt.pt'     # the checkpoint; it fixes the task and the decoder
    show: bool = False               # print one example being decoded, with its latent tokens' guesses
    input: str = ''                  # a file in the task's standard format ('-': the standard input)
    output: str = ''                 # where to write the answers (same format)
    skip_bad: bool = False           # skip and report malformed input lines instead of stopping
    n: int = None                    # decode the first n examples (unset: 1000 of a split, all of --input)
    split: str = None                # train | val | test (unset: test): the checkpoint's own data, without --input
    # decoder settings: None = as the checkpoint was evaluated in training
    n_latent: str = None             # latent sampler: an int (at most that many; fewer once fewer remain) or 'all'
    order: str = None                # random | top_prob | margin | entropy
    n_candidates: int = None         # top_prob & co: choose among this many random masked positions (0 = all; the latent sampler: all but its k latents)
    tokens_per_step: int = None      # positions committed per forward pass
    threshold: float = None          # also commit every candidate this confident (0 = off)
    temperature: float = None        # 0 = greedy
    window: int = None               # ar_mtp: latent window (-1 = all)
    use_cache: bool = None           # ar / ar_mtp with a causal prefix
    cache_refresh: int = None        # mdm, latent: keep clean keys/values, recomputed every r passes (0 = off, -1 = never)
    refresh_below: float = None      # latent, with a cache: a pass about to commit a token less sure than this reruns fresh (0 = off)
    latent_ranks: str = None         # latent: random (the paper's) | confidence (ours: the latent chain easiest first)
    batch_size: int = 256            # examples decoded together
    device: str = 'auto'             # auto (cuda, else cpu) | cpu | cuda | mps (untried)
    dtype: str = 'float32'           # float32 | bfloat16 | float16 | auto (bf16 where supported): autocast while decoding
    seed: int = 0                    # random orders, candidates and sampling


DECODER_SETTINGS = ('n_latent', 'order', 'n_candidates', 'tokens_per_step', 'threshold', 'temperature',
                    'window', 'use_cache', 'cache_refresh', 'refresh_below', 'latent_ranks')
DECODER_VALUES = {      # setting: (is the value usable?, what it must be); a bad one would hang or mislead
    'n_latent': (lambda v: v == 'all' or (isinstance(v, int) and v >= 0), "a count >= 0 or 'all'"),
    'order': (lambda v: v in COMMIT_ORDERS, f'one of {", ".join(COMMIT_ORDERS)}'),
    'n_candidates': (lambda v: v >= 0, 'a count >= 0 (0 = every masked position; the latent sampler: every one but its k latents)'),
    'tokens_per_step': (lambda v: v >= 1, 'at least 1'),
    'threshold': (lambda v: 0 <= v <= 1, 'between 0 (off) and 1'),
    'temperature': (lambda v: v >= 0, 'at least 0 (0 = greedy)'),
    'window': (lambda v: v == -1 or v >= 1, '-1 (all) or a window of at least 1'),
    'use_cache': (lambda v: isinstance(v, bool), 'true or false'),
    'cache_refresh': (lambda v: v >= -1, '-1 (never), 0 (off) or r >= 1 (every r passes)'),
    'refresh_below': (lambda v: 0 <= v <= 1, 'between 0 (off) and 1'),
    'latent_ranks': (lambda v: v in LATENT_RANKS, f'one of {", ".join(LATENT_RANKS)}'),
}


def decoder_value_ok(key, value):
    """Is `value` usable for decoder setting `key` (DECODER_VALUES)? One of the wrong type is not:
    a preset's JSON value, or n_latent's command-line value, whose type is guessed ('4' an int,
    'abc' a string, 'true' a bool; the command line types the others by their annotation)."""
    if isinstance(value, bool) != (key == 'use_cache'):
        return False
    try:
        return bool(DECODER_VALUES[key][0](value))
    except TypeError:
        return False


def decoder_for(ckpt, cfg):
    """The checkpoint's own decoder, with the settings given in cfg applied; clear errors."""
    decoder = dict(ckpt['decoder'])
    method = decoder['method']
    for key in DECODER_SETTINGS:
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in DECODERS[method][1]:
            valid = ', '.join(f'--{k}' for k in DECODERS[method][1])
            raise SystemExit(f'error: --{key} does not apply to this {ckpt["attn"]!r} model ({method} decoding; '
                             f'its settings: {valid})')
        if not decoder_value_ok(key, value):
            raise SystemExit(f'error: --{key} must be {DECODER_VALUES[key][1]}, got {value!r}')
        decoder[key] = value
    # in random order nothing is compared by confidence, except MDM's candidates against a threshold
    if (decoder.get('order') == 'random' and cfg.n_candidates is not None
            and (method == 'latent' or not decoder.get('threshold'))):
        raise SystemExit('error: --n_candidates has no effect with --order=random (the positions to '
                         f'decode are random); it applies to the confidence orders {", ".join(CONFIDENCE_ORDERS)}')
    return decoder


def show(model, task, problem, attn, decoder, device):
    """Print one example being decoded step by step, with what the latent positions guess in each
    pass (a guess is never committed: the position is decoded later, maybe to another value).
    Latent sampler: '*' latent cells, '.' other masked cells, each guess beside its final value;
    each decoded cell with how sure the model was of it (its top probability); a Sudoku cell, decoded
    or latent, by its index and by row and column, counted from 1 (on 6x6, cell 14 (r3c3)).
    MDM: the same drawing, every other masked cell a latent (k = all at every step); SIDM's
    masked cells see no other masked cell, so it has none. With a cache (either sampler), each step
    also says whether its clean cells ran fresh or came from the cache, and with refresh_below,
    where doubt ran the pass again, how sure the pass on the cache was.
    AR+MTP: the answer so far, the token this step writes in [brackets], then the guesses of the
    latent positions after it (the rest of its window). Last, whether the answer verifies, and if
    not, why, where the task can tell (path-star: the wrong arm taken, or steps off the edges)."""
    if decoder['method'] not in ('latent', 'mdm', 'ar_mtp'):
        raise SystemExit('error: --show draws latent tokens: use a diffusion or an AR+MTP checkpoint')
    settings = {k: v for k, v in decoder.items() if k != 'method'}
    x, trace = torch.from_numpy(task.encode(problem)[0])[None].to(device), []
    if decoder['method'] == 'ar_mtp':
        out, _ = decode_ar_mtp(model, x, attn, trace=trace, **settings)
        words = lambda ids: ' '.join(task.vocab[int(i)] for i in ids)
        print(f'problem: {problem}')
        for step, t in enumerate(trace):
            p = t['pos']
            print(f'step {step + 1}: {words(out[0, task.prompt_len + 1:p])} [{words(out[0, p:p + 1])}] '
                  f'{words(t["guess"])}'.replace('  ', ' ').rstrip())
    else:
        decode = decode_latent if decoder['method'] == 'latent' else decode_mdm
        out, _ = decode(model, x, attn, trace=trace, gen=torch.Generator(device=device).manual_seed(0), **settings)
        start = task.prompt_len + 1
        sudoku = task.name.startswith('sudoku')           # drawn as a grid, a cell named by row and column too
        where = (lambda c: f'{c} ({task.cell_name(c)})') if sudoku else str
        for step, t in enumerate(trace):
            now = t['x'].clone(); now[t['commit']] = out[0][t['commit']]
            cells = [task.vocab[int(i)] if int(i) > SEP else '.' for i in now[start:]]
            marks = {p - start: '*' for p in torch.nonzero(t['latent']).flatten().tolist()}
            new = [p - start for p in torch.nonzero(t['commit']).flatten().tolist()]
            decoded = ', '.join(f'cell {where(c)} = {cells[c]} ({float(t["sure"][c + start]):.0%})' for c in new)
            cache = {None: '', 'refreshed': '; cache refreshed: every clean cell run',
                     'kept': '; clean cells from the cache'}.get(t['cache'])
            if cache is None:      # refresh on doubt: ('doubt', how sure the pass on the cache was), rounded
                sure = math.floor(1000 * t['cache'][1]) / 10          # down, so that it reads below refresh_below
                cache = f'; from the cache only {sure:.1f}% sure: pass run again, every clean cell fresh'
            print(f'step {step + 1}: decode {decoded}; '
                  f'{len(marks)} latent tokens (*), {int((t["x"] == MASK).sum()) - len(new) - len(marks)} other masked (.)'
                  + cache)
            if sudoku:
                print('\n'.join(task.grid(cells, marks)))
            else:
                print(''.join(marks.get(i, c) for i, c in enumerate(cells)))
            # what each latent position predicts in this pass (never committed), and what the cell becomes
            guesses = [f'{where(c)}:{task.vocab[int(t["guess"][c + start])]}/{task.vocab[int(out[0][c + start])]}'
                       for c in sorted(marks)]
            print(f'latent guesses (cell:guess/final): {", ".join(guesses)}' if guesses else '', end='\n\n')
    answer = task.decode_answer(out[0].cpu().numpy())
    why = task.failure(problem, answer)          # path-star tells the Clever-Hans guess from the rest
    verdict = 'verifies' if why is None else 'is WRONG' + ('' if why == 'invalid' else f' ({why})')
    print(f'answer {verdict}: {answer}')


def checkpoint_examples(ckpt, split='test', n=None):
    """(task, the first n examples of a split of the data the checkpoint was trained with)."""
    task, tc = get_task(**ckpt['task_config']), ckpt['train_config']
    return task, load_splits(task, tc['n_train'], tc['n_val'], tc['n_test'], tc['data_seed'], tc['data_dir'])[split][:n]


def load_examples(task, ckpt, input='', n=None, split=None, skip_bad=False):
    """The puzzles to decode: the first n of an input file (all without n), or of a split of the
    checkpoint's own data (1000 without n)."""
    if input:
        try:
            read = read_examples(task, input, skip_bad=skip_bad, limit=n)
        except (TaskFormatError, OSError) as e:
            raise SystemExit(f'error: {e} (the checkpoint is for {task.name} {task.options})')
        examples, errors = read if skip_bad else (read, [])
        for e in errors: print('skipped', e)
        return examples
    split = split or 'test'
    if split not in SPLITS:
        raise SystemExit(f'error: --split must be one of {", ".join(SPLITS)}')
    return checkpoint_examples(ckpt, split, n or 1000)[1]


def main(argv):
    cfg = parse_settings(SampleConfig(), argv, refuse={
        'eval': 'decoding and scoring is what sample.py does by default; drop --eval',
        'policy': 'the commit rule is --order=random (uniform) or --order=top_prob (confidence)',
        'method': 'the decoder follows from the checkpoint\'s attention structure'})
    if (cfg.n is not None and cfg.n < 1) or cfg.batch_size < 1:
        raise SystemExit(f'error: --n and --batch_size must be at least 1, got {cfg.n} and {cfg.batch_size}')
    if cfg.output == '-':
        raise SystemExit('error: --output=- would mix the answers with the summary sample.py prints: name a file')
    if cfg.input:
        refuse_unused(cfg, ['split'], '--input', "it decodes the file, not a split of the checkpoint's data")
    else:
        refuse_unused(cfg, ['skip_bad'], 'decoding without --input', 'it skips malformed lines of an --input file')
    if cfg.show:
        refuse_unused(cfg, ['output', 'n', 'batch_size'], '--show', 'it decodes one example, the first, '
                      'prints it and writes no answers')
    if cfg.output:
        check_writable(cfg.output, '--output', 'hold the answers')
    device, dtype, _ = resolve_system(cfg.device, cfg.dtype)
    model, ckpt = load_checkpoint(cfg.ckpt, device)
    task = get_task(**ckpt['task_config'])
    decoder = decoder_for(ckpt, cfg)
    examples = load_examples(task, ckpt, cfg.input, cfg.n, cfg.split, cfg.skip_bad)
    try:
        if cfg.show:
            return show(model, task, examples[0][0], ckpt['attn'], decoder, device)
        result = evaluate(model, task, examples, ckpt['attn'], decoder, cfg.batch_size, device, dtype,
                          cfg.seed, return_answers=True, progress=True, stoppable=True)
    except ValueError as e:       # settings the decoder itself refuses (e.g. a threshold in random order)
        raise SystemExit(f'error: {e}')
    answers, valid = result.pop('answers'), result.pop('valid')
    if result.get('stopped') and not answers:
        raise SystemExit('stopped by Ctrl-C before the first batch was decoded: nothing written')
    if cfg.output:
        write_examples(task, cfg.output, [(p, a) for (p, _), a in zip(examples, answers)])
        print(f'wrote {len(answers)} answers to {cfg.output}')
    settings = ' '.join(f'{k}={v}' for k, v in decoder.items())
    print(f'{task.name} {task.options}, {settings}: {sum(valid)} of {len(valid)} solved ({result["accuracy"]:.1%}), '
          f'{result["nfe_per_sample"]:.1f} forward passes and {result["positions_per_sample"]:.0f} positions '
          f'per sample, {result["seconds"]:.1f}s')
    print(json.dumps(dict(result, ckpt=cfg.ckpt, task=task.config())))
    if result.get('stopped'):          # Ctrl-C: the batches decoded before it are kept and scored
        raise SystemExit(f'stopped by Ctrl-C after {len(answers)} of {len(examples)} examples: '
                         f'{"the answers written and " if cfg.output else ""}the numbers above are of those {len(answers)}')


if __name__ == '__main__':
    main(sys.argv[1:])
