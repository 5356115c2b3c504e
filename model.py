"""
model.py: one compact transformer for every model in this repo, and the attention structures
that make it a masked diffusion model (MDM), an independent one (SIDM), a semi-causal one
(SCDM), an autoregressive one (AR) or AR with multi-token prediction (AR+MTP).

What it teaches: the variants differ *only* in who may attend to whom. That lives in one small
pure function, `attention_mask`. Everything else is a plain pre-norm transformer:
RMSNorm, rotary position embeddings computed from explicit position ids (so a forward pass can
run on any subset of positions, in any order: the trimmed latent sampler needs this), GELU MLP,
tied input/output embeddings (fewer parameters for tiny vocabularies), no biases.
Also here: a KV cache for causal decoding, and the small training utilities both training
scripts share (settings parsing, atomic checkpoints, autocast).
"""
import dataclasses, json, math, os, sys
from contextlib import nullcontext
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

STRUCTURES = ('full', 'independent', 'semi_causal', 'causal', 'prefix', 'causal_prefix')


def attention_mask(structure, masked=None, rank=None, window=None):
    """Boolean attention mask [B, T, T]: entry [b, i, j] is True when query i may attend key j.
    Returns None for 'full' and 'causal' (SDPA's fast paths: no mask / is_causal=True).

    masked [B, T] bool: the MASK positions (M); the others are clean (C).
    rank   [B, T] float: order of the masked positions (semi_causal: any random numbers;
           prefix: the distance from the cut, 0, 1, 2, ...).

      full          everyone sees everyone                       (MDM, joint prediction)
      independent   clean -> clean;  masked i -> clean + i        (SIDM, no latent tokens)
      semi_causal   clean -> clean;  masked i -> clean + i + masked j with rank[j] < rank[i]
                    (SCDM: a random rank per position trains every latent count at once. Equal
                    ranks do not see each other: the sampler uses this to score candidates that
                    all see the same latents.)
      causal        j <= i                                        (AR)
      prefix        clean + the first `window` masked positions see each other; masked
                    positions beyond the window are seen by no one (AR+MTP, the paper's form)
      causal_prefix clean -> earlier clean only (cacheable);  window -> clean + window (ours)
    Clean queries never see masked keys except in full and prefix.
    """
    if structure in ('full', 'causal'):
        return None
    B, T = masked.shape
    clean_k, masked_q = ~masked[:, None, :], masked[:, :, None]
    self_ = torch.eye(T, dtype=torch.bool, device=masked.device)[None]
    if structure == 'independent':
        return clean_k | (masked_q & self_)
    if structure == 'semi_causal':
        lower = rank[:, None, :] < rank[:, :, None]
        return clean_k | self_ | (masked_q & masked[:, None, :] & lower)
    if structure in ('prefix', 'causal_prefix'):
        in_window = masked & (rank < (window if window and window > 0 else T))
        visible_k = (~masked | in_window)[:, None, :]
        if structure == 'prefix':
            return self_ | ((~masked | in_window)[:, :, None] & visible_k)
        causal = torch.ones(T, T, dtype=torch.bool, device=masked.device).tril()[None]
        return self_ | (~masked[:, :, None] & clean_k & causal) | (in_window[:, :, None] & visible_k)
    raise ValueError(f'unknown attention structure {structure!r}; choose from {STRUCTURES}')


@dataclass
class ModelConfig:
    vocab_size: int = 16
    block_size: int = 128           # longest sequence (position ids must stay below it)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0


def rotary(x, pos, base=10000.0):
    """Rotate pairs of channels of x [B, H, T, D] by angles pos * theta_k (RoPE). Because the
    angle comes from the position id and not from the slot index, any subset of positions in
    any order gets exactly the attention scores it would get in the full sequence."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angle = pos[:, None, :, None].float() * theta                 # [B, 1, T, D/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, pos, mask, is_causal, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, pos), rotary(k, pos)
        if cache is not None:                       # prepend the cached keys/values
            k, v = cache.extend(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None],
                                           is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(cfg.n_embd), Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False), nn.Dropout(cfg.dropout))

    def forward(self, x, pos, mask, is_causal, cache=None):
        x = x + self.attn(self.norm1(x), pos, mask, is_causal, cache)
        return x + self.mlp(self.norm2(x))


class KVCache:
    """Keys/values of already-processed positions, per layer. A step appends its new keys and
    values; `commit(n)` keeps only the first n of them (AR+MTP: the new clean token stays, the
    W latent positions after it are thrown away and recomputed next step)."""
    def __init__(self, n_layer):
        self.k, self.v, self.new = [None] * n_layer, [None] * n_layer, [None] * n_layer
        self.layer = 0

    def extend(self, k, v):
        i = self.layer
        self.new[i] = (k, v)
        self.layer = (i + 1) % len(self.k)
        if self.k[i] is None:
            return k, v
        return torch.cat([self.k[i], k], 2), torch.cat([self.v[i], v], 2)

    def commit(self, n):
        for i, (k, v) in enumerate(self.new):
            k, v = k[:, :, :n], v[:, :, :n]
            self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k], 2)
            self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v], 2)

    def __len__(self):
        return 0 if self.k[0] is None else self.k[0].shape[2]


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd)
        self.apply(self._init)
        for name, p in self.named_parameters():      # GPT-2 scaled init of residual projections
            if name.endswith('proj.weight') or name.endswith('mlp.2.weight'):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, pos=None, mask=None, is_causal=False, targets=None, cache=None):
        """idx [B, T] token ids; pos [B, T] position ids (default 0..T-1); mask [B, T, T] from
        attention_mask (None = full, or causal with is_causal=True). Returns logits [B, T, V]
        and, when targets are given, the per-token cross-entropy [B, T] (each training script
        weights it into its own loss, next to its equation)."""
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device).expand(B, T)
        if int(pos.max()) >= self.cfg.block_size:
            raise ValueError(f'position id {int(pos.max())} >= block_size {self.cfg.block_size}')
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, pos, mask, is_causal, cache)
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


# ----------------------------------------------------------------------------------------------
# Shared by train_mdlm.py, train_ar_mtp.py and sample.py

def parse_settings(cfg, argv, extra=()):
    """nanoGPT-style settings: a dataclass instance, then preset files (positional *.json
    arguments or --preset=path), then --key=value overrides, in order. An unknown key is an
    error that lists the valid ones. Keys named in `extra` are returned separately."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    extras = {}

    def set_(key, value, source):
        if key in extra:
            extras[key] = value; return
        if key not in fields:
            raise SystemExit(f'error: unknown setting {key!r} in {source}. Valid settings: '
                             + ', '.join(sorted(list(fields) + list(extra))))
        current = getattr(cfg, key)
        if isinstance(value, str) and not isinstance(current, str):
            value = _parse_value(value, current, key)
        setattr(cfg, key, value)

    for arg in argv:
        if arg.endswith('.json') and not arg.startswith('--'):
            arg = f'--preset={arg}'
        if not arg.startswith('--'):
            raise SystemExit(f'error: unexpected argument {arg!r}; use --key=value')
        key, eq, value = arg[2:].partition('=')
        if key == 'preset':
            path = value if os.path.exists(value) else os.path.join(os.path.dirname(__file__), 'presets', value + '.json')
            try:
                with open(path) as f:
                    preset = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise SystemExit(f'error: cannot read preset {value!r}: {e}')
            for k, v in preset.items():
                set_(k, v, path)
        else:
            set_(key, value if eq else 'true', 'the command line')
    return (cfg, extras) if extra else cfg


def _parse_value(value, current, key):
    try:
        if isinstance(current, bool):
            if value.lower() not in ('true', 'false', '1', '0'): raise ValueError
            return value.lower() in ('true', '1')
        if isinstance(current, int): return int(value)
        if isinstance(current, float): return float(value)
        if isinstance(current, dict): return json.loads(value)
        if current is None:
            return json.loads(value) if value[:1] in '{[0123456789-' else value
    except (ValueError, json.JSONDecodeError):
        raise SystemExit(f'error: bad value {value!r} for {key} (expected {type(current).__name__})')
    return value


def pick_device(device='auto'):
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    return device


def autocast(device, dtype):
    """bf16/fp16 autocast context for 'bfloat16'/'float16'; nothing for 'float32'."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device.split(':')[0], dtype=getattr(torch, dtype))


CHECKPOINT_KIND = 'latent-tokens-checkpoint-v1'

def save_checkpoint(path, **state):
    """One file, written atomically: a kill mid-write leaves the previous checkpoint intact."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    torch.save(dict(kind=CHECKPOINT_KIND, **state), path + '.tmp')
    os.replace(path + '.tmp', path)


def load_checkpoint(path, device='cpu'):
    """-> (model, checkpoint dict). Clear errors for a missing file or a foreign one."""
    if not os.path.exists(path):
        raise SystemExit(f'error: checkpoint {path!r} does not exist')
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:                          # torch raises many kinds for a bad file
        raise SystemExit(f'error: {path!r} is not a readable checkpoint ({type(e).__name__})')
    if not isinstance(ckpt, dict) or ckpt.get('kind') != CHECKPOINT_KIND:
        raise SystemExit(f'error: {path!r} is not a checkpoint written by this repo')
    model = Transformer(ModelConfig(**ckpt['model_config'])).to(device)
    model.load_state_dict(ckpt['model'])
    return model, ckpt
