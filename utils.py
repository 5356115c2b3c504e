"""
utils.py: the torch plumbing every script shares, kept out of the model so model.py is only the model
(settings are in configurator.py).

  pick_device      the device a setting names, checked on this machine
  resolve_system   device, dtype (bf16 where supported) and torch.compile from 'auto' settings
  autocast         the mixed-precision context for a device and dtype
  save_checkpoint / load_checkpoint   atomic writes, safe reads (no code runs on load)
"""
import os, pickle, re
from contextlib import nullcontext
import torch
from model import ModelConfig, Transformer


DTYPES = ('auto', 'bfloat16', 'float16', 'float32')


def pick_device(device='auto'):
    """'auto': cuda, else cpu. Apple's MPS only when named (--device=mps): no run of this repo has
    been made there, and it lacks float64, which sampling used everywhere else (sample.wide_float).
    Any other name must be a device this machine has: a clear error here, not a traceback from the
    first tensor moved there."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise SystemExit(f'error: unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps') from None
    if (kind == 'cuda' and not torch.cuda.is_available()) or (kind == 'mps' and not torch.backends.mps.is_available()):
        raise SystemExit(f'error: device {device!r} is not available on this machine; use --device=auto or cpu')
    return device


def resolve_system(device='auto', dtype='auto', compile='auto'):
    """-> (device, dtype, use_compile). dtype 'auto' is bf16 on CUDA cards that support it and on
    CPUs with AVX-512 (`train_mdlm.py --bench` prints ours in float32 beside the autocast rows: on
    our 2-core Xeon with AMX, 0.8M parameters, bf16 autocast trained 1.5x the tokens/s of float32;
    on an AVX2-only EPYC it trained 15x slower than float32, README's Settings);
    compile 'auto' is on for CUDA only: on a CPU it needs a C++ compiler and tens of seconds to
    build, and pays only in part (results/benchmarks.md: on the Xeon AR+MTP trained 1.6x slower
    compiled)."""
    if dtype not in DTYPES:
        raise SystemExit(f'error: dtype must be one of {", ".join(DTYPES)}, not {dtype!r}')
    if str(compile).lower() not in ('auto', 'true', 'false'):
        raise SystemExit(f'error: compile must be auto, true or false, not {compile!r}')
    device = pick_device(device)
    if dtype == 'auto':
        cpu_bf16 = device == 'cpu' and 'AVX512' in torch.backends.cpu.get_cpu_capability()
        dtype = 'bfloat16' if (device == 'cuda' and torch.cuda.is_bf16_supported()) or cpu_bf16 else 'float32'
    use_compile = device == 'cuda' if compile == 'auto' else str(compile).lower() == 'true'
    return device, dtype, use_compile


def autocast(device, dtype):
    """bf16/fp16 autocast context for 'bfloat16'/'float16'; nothing for 'float32'."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device.split(':')[0], dtype=getattr(torch, dtype))


# ----------------------------------------------------------------------------------------------
# Checkpoints: one file holding tensors and plain Python values only (dicts, lists, numbers,
# strings), so that `torch.load(weights_only=True)` can read it without running any code.

CHECKPOINT_KIND = 'latent-tokens-checkpoint-v2'     # v2: absolute position embeddings, safe loading
CHECKPOINT_KEYS = ('model', 'model_config', 'task_config', 'train_config', 'attn', 'decoder')


def save_checkpoint(path, **state):
    """One file, written atomically: a kill mid-write leaves the previous checkpoint intact.
    Non-finite weights are never written (they would destroy the last good checkpoint)."""
    bad = [k for k, v in state['model'].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SystemExit(f'error: not saving {path}: non-finite weights in {bad[0]} (and {len(bad) - 1} more)')
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    torch.save(dict(kind=CHECKPOINT_KIND, **state), path + '.tmp')
    os.replace(path + '.tmp', path)


def load_checkpoint(path, device='cpu'):
    """-> (model in eval mode, checkpoint dict). Clear one-line errors for a missing, unsafe, foreign or
    incomplete file."""
    if not os.path.exists(path):
        raise SystemExit(f'error: checkpoint {path!r} does not exist')
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:             # weights_only met something it will not build
        found = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        if not found:
            raise SystemExit(f'error: {path!r} is not a readable checkpoint (it does not unpickle)')
        raise SystemExit(f'error: refusing to load {path!r}: it asks to call {found.group(1)}, and a checkpoint '
                         'holds only tensors and plain values; loading it could run code')
    except Exception as e:                          # torch raises many kinds for a bad file
        raise SystemExit(f'error: {path!r} is not a readable checkpoint ({type(e).__name__})')
    if not isinstance(ckpt, dict) or ckpt.get('kind') != CHECKPOINT_KIND:
        raise SystemExit(f'error: {path!r} is not a checkpoint written by this version of the repo '
                         f'(expected kind {CHECKPOINT_KIND!r}); retrain it')
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise SystemExit(f'error: checkpoint {path!r} is incomplete: it has no {", ".join(missing)}')
    model = Transformer(ModelConfig(**ckpt['model_config'])).to(device)
    try:
        model.load_state_dict(ckpt['model'])
    except RuntimeError as e:
        raise SystemExit(f'error: the weights in {path!r} do not fit the model it describes '
                         f'({str(e).splitlines()[0][:120]})')
    return model.eval(), ckpt                     # for inference; training sets train() itself
