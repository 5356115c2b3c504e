"""
model.py: one compact transformer for every model in this repo, and the attention structures
(`attn`) that make it a masked diffusion model (MDM), an independent one (SIDM), a semi-causal one
(SCDM), an autoregressive one (AR) or AR with multi-token prediction (AR+MTP).

What it teaches: the variants differ *only* in who may attend to whom. That lives in one small
pure function, `attention_mask`. Everything else is a plain pre-norm transformer:
RMSNorm, learned absolute position embeddings *and* rotary ones, both looked up from explicit
position ids (so a forward pass can run on any subset of positions, in any order: the trimmed
latent sampler needs this), GELU MLP, tied input/output embeddings (fewer parameters for tiny
vocabularies), no biases. The absolute embeddings matter: in an in-place Sudoku a cell's row,
column and box are absolute facts, and rotary embeddings alone only give relative offsets.
Also here: a key/value cache (causal decoding, and the latent sampler's clean positions).
"""
import math
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_STD = 0.02         # GPT-2's scale for the initial weights
ATTNS = ('full', 'independent', 'semi_causal', 'semi_causal_ordered', 'masked_full',
         'causal', 'prefix', 'causal_prefix')


def attention_mask(attn, masked=None, rank=None, window=None):
    """Boolean attention mask [B, T, T]: entry [b, i, j] is True when query i may attend key j.
    Returns None for 'full' and 'causal' (SDPA's fast paths: no mask / is_causal=True).

    masked [B, T] bool: the MASK positions (M); the others are clean (C).
    rank   [B, T] float: order of the masked positions (semi_causal: any random numbers;
           prefix: the distance from the cut, 0, 1, 2, ...); semi_causal_ordered also orders the
           clean positions (the order they were decoded in; the givens lowest).

      full          everyone sees everyone                       (MDM, joint prediction)
      independent   clean -> clean;  masked i -> clean + i        (SIDM, no latent tokens)
      semi_causal   clean -> clean;  masked i -> clean + i + masked j with rank[j] < rank[i]
                    (SCDM: a random rank per position trains every latent count at once. Equal
                    ranks do not see each other: the sampler uses this to score candidates that
                    all see the same latents.)
      semi_causal_ordered  as semi_causal, but clean i -> clean j only with rank[j] <= rank[i]
                    (ours: a clean position never sees one decoded after it, so its keys/values
                    never change once computed, and the sampler's cache of them is exact)
      masked_full   clean -> clean;  masked -> everyone           (an ablation, ours: MDM's masked
                    side with SCDM's clean side, to measure what it costs that clean cells never
                    see masked ones)
      causal        j <= i                                        (AR)
      prefix        clean + the first `window` masked positions see each other; masked
                    positions beyond the window are seen by no one (AR+MTP, the paper's form)
      causal_prefix clean -> earlier clean only (cacheable);  window -> clean + window (ours)
    Clean queries never see masked keys except in full and prefix.
    """
    if attn in ('full', 'causal'):
        return None
    B, T = masked.shape
    clean_k, masked_q = ~masked[:, None, :], masked[:, :, None]
    self_ = torch.eye(T, dtype=torch.bool, device=masked.device)[None]
    if attn == 'independent':
        return clean_k | (masked_q & self_)
    if attn == 'masked_full':
        return clean_k | masked_q
    if attn in ('semi_causal', 'semi_causal_ordered'):
        # EXERCISE 1: semi-causal attention
        lower = rank[:, None, :] < rank[:, :, None]
        mask = clean_k | self_ | (masked_q & masked[:, None, :] & lower)
        # END EXERCISE 1
        if attn == 'semi_causal_ordered':
            mask = mask & (masked_q | (rank[:, None, :] <= rank[:, :, None]))
        return mask
    if attn in ('prefix', 'causal_prefix'):
        in_window = masked & (rank < (window if window and window > 0 else T))
        visible_k = (~masked | in_window)[:, None, :]
        if attn == 'prefix':
            return self_ | ((~masked | in_window)[:, :, None] & visible_k)
        causal = torch.ones(T, T, dtype=torch.bool, device=masked.device).tril()[None]
        return self_ | (~masked[:, :, None] & clean_k & causal) | (in_window[:, :, None] & visible_k)
    raise ValueError(f'unknown attn {attn!r}; choose from {ATTNS}')


@dataclass
class ModelConfig:
    vocab_size: int = 16
    block_size: int = 128           # longest sequence (position ids must stay below it)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


def rotary_cos_sin(pos, head_dim, base=10000.0):
    """RoPE angles pos * theta_k as (cos, sin) [B or 1, 1, T, head_dim/2]: computed once per forward
    pass from the position ids (not from the slot index), so any subset of positions in any order
    gets exactly the attention scores it would get in the full sequence."""
    theta = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angle = pos[:, None, :, None].float() * theta
    return angle.cos(), angle.sin()


def rotary(x, cos, sin):
    """Rotate channel i with channel i + D/2 of x [..., T, D] by the angles (rotate-half form),
    in x's dtype. Autograd's backward: a hand-written one gained nothing that lasted
    (results/benchmarks.md)."""
    x1, x2 = x.chunk(2, -1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def attend(q, k, v, attn_mask, is_causal, dropout_p):
    """softmax(q k^T / sqrt(d)) v over the keys each query may see. attn_mask [B, Tq, Tk] bool
    (True = may attend) or None; is_causal: key j visible to query i when j <= i.

    On GPUs: PyTorch's fused kernels (scaled_dot_product_attention). On CPU: the same formula
    written out, which at the short sequences here trains about 3x faster than the CPU flash
    kernel PyTorch picks by default (`python train_mdlm.py --bench` prints a plain GPT with both)
    and as fast as its math kernel, with nothing hidden. Precision: the inputs' dtype. In a bf16
    autocast run (the default on CPUs with bf16) the products and the softmax run in bf16, as in
    every bf16 run measured in this repo: autocast casts a matrix product's inputs to bf16 whatever
    their dtype, so converting q, k and v to float32 here would only add copies (results/studies.md,
    "Attention's precision")."""
    if attn_mask is not None:
        attn_mask = attn_mask[:, None]                    # one mask for every head
    if q.device.type != 'cpu':
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)
    # scale and mask in place: the product's backward needs only q and k, an added constant nothing
    scores = q @ k.transpose(-2, -1)
    scores.mul_(q.shape[-1] ** -0.5)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores.add_(torch.where(attn_mask, 0.0, float('-inf')))         # -inf where not visible
    weights = F.dropout(scores.softmax(-1), dropout_p)
    return weights @ v


class RMSNormFunction(torch.autograd.Function):
    """y = x_hat * w with x_hat = x * r, r = 1 / sqrt(mean(x^2) + eps), over the last dimension.
    Backward, written out (g = dL/dy; means over the last dimension):
        dL/dx = r * (g w - x_hat * mean(g w x_hat)),   dL/dw = sum over rows of g x_hat.
    Why: PyTorch's CPU RMSNorm is a chain of elementwise ops, and autograd's backward through
    them cost about 3x a fused LayerNorm on the Intel Xeon where this was written; there this form
    trains the whole model 1.11x faster, on AMD EPYCs 1.00x to 1.03x (`python train_mdlm.py
    --bench`, row 'ours, causal, autograd RMSNorm'; results/benchmarks.md)."""
    @staticmethod
    def forward(ctx, x, w, eps):
        r = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        x_hat = x * r
        ctx.save_for_backward(x_hat, r, w)
        return x_hat * w

    @staticmethod
    def backward(ctx, g):
        x_hat, r, w = ctx.saved_tensors
        gw = g * w
        dx = torch.addcmul(gw, x_hat, (gw * x_hat).mean(-1, keepdim=True), value=-1).mul_(r)
        return dx, (g * x_hat).flatten(0, -2).sum(0), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters, same eps, same checkpoints), with the backward above on CPU;
    PyTorch's own elsewhere (not measured against this form on a GPU)."""
    def forward(self, x):
        if x.device.type != 'cpu':
            return super().forward(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps     # nn.RMSNorm's default
        return RMSNormFunction.apply(x, self.weight, eps)


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.dropout, self.layer = cfg.n_head, cfg.dropout, layer
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rope, attn_mask, is_causal, cache=None):
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        # q and k rotated in one go; split, not two index ops, whose backward fills a zero tensor
        # the size of qkv for each and adds them (about 4% of a CPU training step: benchmarks.md)
        qk, v = qkv.split([2, 1])
        (q, k), v = rotary(qk, *rope), v[0]
        if cache is not None:                       # prepend the cached keys/values
            k, v = cache.extend(self.layer, k, v)
        y = attend(q, k, v, attn_mask, is_causal, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.n_embd), Attention(cfg, layer)
        self.norm2 = RMSNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False), nn.Dropout(cfg.dropout))

    def forward(self, x, rope, attn_mask, is_causal, cache=None):
        x = x + self.attn(self.norm1(x), rope, attn_mask, is_causal, cache)
        return x + self.mlp(self.norm2(x))


class KVCache:
    """Keys/values of already-processed positions, per layer. A step appends its new keys and
    values; `commit(n)` keeps only the first n of them (AR+MTP: the new clean token stays, the
    W latent positions after it are thrown away and recomputed next step). The diffusion
    decoders' cache, which also says which positions it holds, is sample.py's CleanCache."""
    def __init__(self, n_layer):
        self.k, self.v, self.new = [None] * n_layer, [None] * n_layer, [None] * n_layer

    def extend(self, i, k, v):
        """Layer i: remember this step's keys/values, return them after the cached ones."""
        self.new[i] = (k, v)
        if self.k[i] is None:
            return k, v
        return torch.cat([self.k[i], k], 2), torch.cat([self.v[i], v], 2)

    def commit(self, n):
        # EXERCISE 5: keep the first n new keys/values of every layer
        for i, (k, v) in enumerate(self.new):
            k, v = k[:, :, :n], v[:, :, :n]
            self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k], 2)
            self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v], 2)
        # END EXERCISE 5

    def __len__(self):
        return 0 if self.k[0] is None else self.k[0].shape[2]


class Transformer(nn.Module):
    def __init__(self, cfg, init_std=INIT_STD):
        """init_std scales the initial weights (not in cfg: a checkpoint's weights replace them)."""
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.n_embd)     # absolute, by position id
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        # GPT-2's draw, then scaled by init_std / INIT_STD (not drawn at init_std): every scale
        # gets the seed's draw bit for bit, so a result's scale can be told apart from its draw
        scale = init_std / INIT_STD
        with torch.no_grad():
            self.apply(lambda m: self._init(m, scale))
            for name, p in self.named_parameters():      # GPT-2 scaled init of residual projections
                if name.endswith('proj.weight') or name.endswith('mlp.2.weight'):
                    nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * cfg.n_layer)).mul_(scale)

    @staticmethod
    def _init(m, scale):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, INIT_STD).mul_(scale)

    def forward(self, idx, pos=None, attn_mask=None, is_causal=False, targets=None, cache=None):
        """idx [B, T] token ids; pos [B, T] position ids (default 0..T-1); attn_mask [B, T, T] from
        attention_mask (None = full, or causal with is_causal=True). Returns logits [B, T, V]
        and, when targets are given, the per-token cross-entropy [B, T] (each training script
        weights it into its own loss, next to its equation)."""
        B, T = idx.shape
        last = T - 1 if pos is None else int(pos.max())
        if last >= self.cfg.block_size:
            raise ValueError(f'position id {last} >= block_size {self.cfg.block_size}')
        if pos is None:                             # one row, broadcast over the batch
            pos = torch.arange(T, device=idx.device)[None]
        x = self.embed(idx) + self.pos_embed(pos)
        rope = rotary_cos_sin(pos, self.cfg.n_embd // self.cfg.n_head)
        for block in self.blocks:
            x = block(x, rope, attn_mask, is_causal, cache)
        logits = self.norm(x) @ self.embed.weight.T                      # tied embeddings
        if targets is None:
            return logits, None
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction='none')
        return logits, ce.view(B, T)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token (PaLM appendix B, as in nanoGPT): 6N + 12 L H Q T."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * T

    def estimate_mfu(self, tokens_per_second, T, peak_flops=989e12):
        """Model FLOPs utilisation against a peak (default: H100 SXM dense bf16)."""
        return self.flops_per_token(T) * tokens_per_second / peak_flops
