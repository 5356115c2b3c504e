"""
train_ar_mtp.py: an autoregressive baseline, and latent tokens for AR through a
multi-token-prediction (MTP) objective. Same model, data and training loop as train_mdlm.py;
only the loss and the attention structure differ.

What it teaches (../shared/DESIGN.md section 4):
  --mtp_window=0   plain AR: causal next-token cross-entropy on the answer positions.
  --mtp_window=W   AR+MTP (the paper): per example a uniform cut c inside the answer; positions
                   before c stay clean, positions from c on become MASK. The clean prefix and the
                   first W masked positions attend to each other; the loss is the cross-entropy
                   on those W masked positions. W = -1: all of them. Position c is the next token;
                   c+1 .. c+W-1 are latent tokens: joint guesses about the future.
  --ntp_only       ablation: same inputs, loss on the first masked position only. It separates
                   "more positions in the pass" from "predicting future tokens jointly".
  --prefix=causal  ours: clean positions attend causally and never to the masked suffix, so at
                   inference their keys/values are cached and a step costs W+1 positions.

    python train_ar_mtp.py --task=path_star --mtp_window=0   --out_dir=out/ar
    python train_ar_mtp.py --task=path_star --mtp_window=-1  --out_dir=out/ar_mtp
    python train_ar_mtp.py --task=path_star --mtp_window=-1 --ntp_only --out_dir=out/ar_ntp
"""
import sys
import torch
from model import attention_mask
from tasks import MASK
from train_mdlm import TrainConfig, settings, train


def ar_loss(model, ids, answer_mask, cfg, gen):
    """Plain AR: logits at position p predict token p+1; loss on answer tokens only."""
    _, ce = model(ids[:, :-1], is_causal=True, targets=ids[:, 1:])
    target_mask = answer_mask[:, 1:]
    loss = (ce * target_mask).sum() / target_mask.sum()
    return loss, loss


def mtp_loss(model, ids, answer_mask, cfg, gen):
    """AR+MTP: mask everything from a random cut c in the answer on; predict the first W masked
    positions jointly (rank = distance from the cut), averaged over those positions."""
    B, T = ids.shape
    first = answer_mask.float().argmax(1, keepdim=True)                  # first answer position
    n_answer = answer_mask.sum(1, keepdim=True)
    cut = first + (torch.rand(B, 1, generator=gen, device=ids.device) * n_answer).long()
    rank = (torch.arange(T, device=ids.device)[None] - cut).float()     # 0 at the cut
    masked = answer_mask & (rank >= 0)
    W = T if cfg.mtp_window < 0 else cfg.mtp_window
    structure = 'causal_prefix' if cfg.prefix == 'causal' else 'prefix'
    _, ce = model(ids.masked_fill(masked, MASK), mask=attention_mask(structure, masked, rank, W), targets=ids)
    in_loss = masked & (rank < (1 if cfg.ntp_only else W))
    loss = (ce * in_loss).sum() / in_loss.sum()
    return loss, loss


def objective(cfg):
    """(loss, attention structure, decoder) that train() needs for these settings."""
    if cfg.mtp_window == 0:
        return ar_loss, 'causal', dict(method='ar')
    structure = 'causal_prefix' if cfg.prefix == 'causal' else 'prefix'
    return mtp_loss, structure, dict(method='ar_mtp', window=cfg.mtp_window)


if __name__ == '__main__':
    cfg, do_bench = settings(sys.argv[1:], TrainConfig(out_dir='out/ar', task_options=dict(size=6, layout='prompt')))
    if cfg.task == 'sudoku' and cfg.task_options.get('layout', 'inplace') != 'prompt':
        raise SystemExit('error: AR models need --layout=prompt for sudoku (the puzzle before the answer)')
    if cfg.prefix not in ('full', 'causal'):
        raise SystemExit(f"error: --prefix must be full or causal, got {cfg.prefix!r}")
    metrics, path = train(cfg, *objective(cfg))
    print(f'final: val solve accuracy {metrics["val_accuracy"]:.1%}, checkpoint {path}')
