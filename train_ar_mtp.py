"""
train_ar_mtp.py: an autoregressive baseline, and latent tokens for AR through a
multi-token-prediction (MTP) objective. Same model, data and training loop as train_mdlm.py;
only the loss and the attention structure differ.

What it teaches:
  --mtp_window=0   plain AR: causal next-token cross-entropy on the answer positions.
  --mtp_window=W   AR+MTP (the paper): per example a uniform cut c inside the answer; positions
                   before c stay clean, positions from c on become MASK. The clean prefix and the
                   first W masked positions attend to each other; the loss is the cross-entropy
                   on those W masked positions. W = -1: all of them. Position c is the next token;
                   c+1 .. c+W-1 are latent tokens: joint guesses about the future.
  --ntp_only       ablation: same inputs, loss on the first masked position only. It separates
                   "more positions in the pass" from "predicting future tokens jointly".
  --teacherless=q  a share q of the examples is cut at the answer's start, the rest uniformly:
                   q = 1 is Bachmann and Nagarajan's teacherless objective (the whole answer
                   guessed from the prompt, no answer token given), q = 0 the paper's AR+MTP.
  --prefix=causal  clean positions attend causally and never to the masked suffix (the authors'
                   code trains this variant too); what is ours is using it at inference: the
                   prefix keys/values are cached, so a step costs W+1 positions.
  window_accuracy  what the latent positions know: at each cut, how often each one's guess about
                   the future is right (`python reproduce.py --probe_window --ckpt=...`).

    python train_ar_mtp.py --task=path_star --mtp_window=0   --out_dir=out/ar
    python train_ar_mtp.py --task=path_star --mtp_window=-1  --out_dir=out/ar_mtp
    python train_ar_mtp.py --task=path_star --mtp_window=-1 --ntp_only --out_dir=out/ar_ntp
"""
import sys
from dataclasses import dataclass, field
import torch
from model import attention_mask
from sample import default_decoder
from tasks import MASK
from train_mdlm import TrainConfig, end_torchrun_process, settings, train


@dataclass
class ARConfig(TrainConfig):
    task_options: dict = field(default_factory=lambda: dict(size=6, layout='prompt'))
    out_dir: str = 'out/ar'
    # AR and AR+MTP
    mtp_window: int = 0               # 0: plain AR;  W > 0 (or -1 = all): AR+MTP
    ntp_only: bool = False            # ablation: loss on the first masked position only
    teacherless: float = 0.0          # share of examples cut at the answer's start (0: all cuts uniform)
    prefix: str = 'full'              # full | causal (a cacheable prefix)


PREFIX_ATTN = {'full': 'prefix', 'causal': 'causal_prefix'}     # --prefix -> attention structure


def ar_loss(model, ids, answer_mask, cfg, gen, rows=slice(None)):
    """Plain AR: logits at position p predict token p+1; loss on answer tokens only."""
    ids, answer_mask = ids[rows], answer_mask[rows]
    _, ce = model(ids[:, :-1], is_causal=True, targets=ids[:, 1:])
    target_mask = answer_mask[:, 1:]
    loss = (ce * target_mask).sum() / target_mask.sum()
    return loss, loss


def mtp_inputs(ids, answer_mask, cut, window, prefix='full'):
    """The AR+MTP view of a batch cut at position `cut` [B, 1]: answer positions from the cut on
    become MASK, ranked by their distance from the cut (0 = the next token), and the clean prefix
    and the first `window` of them (-1: all) attend to each other.
    -> (input ids, attention mask, masked, rank)"""
    T = ids.shape[1]
    rank = (torch.arange(T, device=ids.device)[None] - cut).float()             # 0 at the cut
    masked = answer_mask & (rank >= 0)
    attn_mask = attention_mask(PREFIX_ATTN[prefix], masked, rank, T if window < 0 else window)
    return ids.masked_fill(masked, MASK), attn_mask, masked, rank


def mtp_loss(model, ids, answer_mask, cfg, gen, rows=slice(None)):
    """AR+MTP: mask everything from a random cut c in the answer on; predict the first W masked
    positions jointly (rank = distance from the cut). Every example weighs the same: its loss is
    the mean cross-entropy over its own loss positions (as in the authors' code), so examples cut
    early (many positions) do not drown the next-token term of those cut late. As in
    diffusion_loss, cuts are drawn for the whole batch and only `rows` are computed.
    With --teacherless=q, u < q cuts at the answer's start and the rest of u spreads uniformly
    (one draw either way, so q = 0 draws the very same cuts)."""
    u = torch.rand(ids.shape[0], 1, generator=gen, device=ids.device)[rows]
    ids, answer_mask = ids[rows], answer_mask[rows]
    first = answer_mask.float().argmax(1, keepdim=True)                  # first answer position
    # (below 1 after rounding too, so every cut stays inside the answer; at q = 0 nothing moves)
    u = ((u - cfg.teacherless) / (1 - cfg.teacherless)).clamp(0, 1 - 1e-7) if cfg.teacherless < 1 else u * 0
    cut = first + (u * answer_mask.sum(1, keepdim=True)).long()
    x, attn_mask, masked, rank = mtp_inputs(ids, answer_mask, cut, cfg.mtp_window, cfg.prefix)
    _, ce = model(x, attn_mask=attn_mask, targets=ids)
    W = ids.shape[1] if cfg.mtp_window < 0 else cfg.mtp_window
    # EXERCISE 4: which positions are in the loss, and the per-example mean
    in_loss = masked & (rank < (1 if cfg.ntp_only else W))
    loss = ((ce * in_loss).sum(1) / in_loss.sum(1).clamp(min=1)).mean()
    # END EXERCISE 4
    return loss, loss


@torch.no_grad()
def window_accuracy(model, ids, answer_mask, window, prefix='full', batch_size=128):
    """What AR+MTP's latent positions know, teacher-forced: for every cut c in the answer (the
    answer before c given, right), the share of examples whose guess (argmax) at each masked
    answer position p in the window is the true token. -> [L, L] float, row c, column p (answer
    positions); NaN where p < c (given) or p is beyond the window. Column p = c is next-token
    accuracy; the columns after it are the latent tokens' guesses about the future. Examples
    run batch_size at a time (counts are summed, so the batch size does not change the result)."""
    L = int(answer_mask.sum(1).max())
    W = L if window < 0 else window
    right_n, seen_n = torch.zeros(L, L), torch.zeros(L, L)
    for b in range(0, len(ids), batch_size):
        x_ids, x_answer = ids[b:b + batch_size], answer_mask[b:b + batch_size]
        first = x_answer.float().argmax(1, keepdim=True)
        for c in range(L):
            x, attn_mask, masked, rank = mtp_inputs(x_ids, x_answer, first + c, window, prefix)
            right = model(x, attn_mask=attn_mask)[0].argmax(-1) == x_ids
            for d in range(min(W, L - c)):
                at = masked & (rank == d)
                right_n[c, c + d] += (right & at).sum().item()
                seen_n[c, c + d] += at.sum().item()
    return right_n / seen_n                       # 0 / 0 = NaN: given, or beyond the window


def objective(cfg):
    """(loss, attention structure, decoder) that train() needs for these settings."""
    if cfg.prefix not in PREFIX_ATTN:
        raise SystemExit(f'error: --prefix must be full or causal, got {cfg.prefix!r}')
    if not 0 <= cfg.teacherless <= 1:
        raise SystemExit(f'error: --teacherless is a share of examples, from 0 to 1, got {cfg.teacherless}')
    if cfg.mtp_window < -1:
        raise SystemExit(f'error: --mtp_window must be 0 (AR), a window W > 0 or -1 (all), got {cfg.mtp_window}')
    if cfg.mtp_window == 0:
        if cfg.ntp_only or cfg.prefix != 'full' or cfg.teacherless:
            raise SystemExit('error: --ntp_only, --prefix and --teacherless apply to AR+MTP; set --mtp_window too')
        return ar_loss, 'causal', default_decoder('causal')
    attn = PREFIX_ATTN[cfg.prefix]
    return mtp_loss, attn, default_decoder(attn, cfg.mtp_window)


def main(argv):
    cfg, _ = settings(argv, ARConfig(), bench=False, refuse={
        'attn': 'AR attention follows from --mtp_window and --prefix',
        'independent_share': 'it shapes semi-causal diffusion training (train_mdlm.py)',
        'bench': 'the training-speed benchmark is `python train_mdlm.py --bench`'})
    if cfg.task == 'sudoku' and cfg.task_options.get('layout', 'inplace') != 'prompt':
        raise SystemExit('error: AR models need --layout=prompt for sudoku (the puzzle before the answer)')
    train(cfg, *objective(cfg))


if __name__ == '__main__':
    main(sys.argv[1:])
    end_torchrun_process()
