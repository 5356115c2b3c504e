"""
utils.py: the plumbing every script shares, kept out of the model so model.py is only the model.

  parse_settings   nanoGPT-style settings: a dataclass, preset files, --key=value overrides;
                   --help lists them with the comments written next to them in the dataclass
  resolve_system   device, dtype (bf16 where supported) and torch.compile from 'auto' settings
  autocast         the mixed-precision context for a device and dtype
  save_checkpoint / load_checkpoint   atomic writes, safe reads (no code runs on load)
"""
import dataclasses, inspect, json, os, pickle, re, sys
from contextlib import nullcontext
import torch
from model import ModelConfig, Transformer
from tasks import TASKS, task_options


def parse_settings(cfg, argv, extra=(), refuse=None):
    """A dataclass instance, then preset files (positional *.json arguments or --preset=path),
    then --key=value overrides, in order. An unknown key is an error that lists the valid ones.
    Keys named in `extra` are returned separately, typed by parse_value; keys in `refuse` ({key: why}) are an error
    that says why (a setting that exists elsewhere but means nothing here). A key given twice on
    the command line is an error too: one of the two values would be ignored (a preset's value
    overridden on the command line is the point of presets). --help (or -h) anywhere prints every
    setting, as the other arguments leave it, and exits."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    refuse, extras, given = refuse or {}, {}, {}
    want_help = any(arg in ('--help', '-h') for arg in argv)
    argv = [arg for arg in argv if arg not in ('--help', '-h')]

    def set_(key, value, source):
        if key in refuse:
            raise SystemExit(f'error: --{key} is not used here: {refuse[key]}')
        if key in extra:
            extras[key] = parse_value(value) if isinstance(value, str) else value; return
        if key not in fields:
            raise SystemExit(f'error: unknown setting {key!r} in {source}. Valid settings: '
                             + ', '.join(sorted(fields | set(extra))))
        current = getattr(cfg, key)
        if isinstance(value, str) and not isinstance(current, str):
            value = parse_value(value, current, key)
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
            if key in given:
                raise SystemExit(f'error: --{key} is given twice ({given[key]} and {arg}); '
                                 'one value would be ignored, so give it once')
            given[key] = arg
            set_(key, value if eq else 'true', 'the command line')
    if want_help:
        print(settings_help(cfg, extra, refuse))
        raise SystemExit(0)
    return (cfg, extras) if extra else cfg


def setting_comments(cls):
    """{setting: its comment} and {setting: the section comment above it}, read from the source
    of a settings dataclass and its parents, so the help text is the comments beside the code. A
    comment line indented past the settings continues the comment above it; one at their
    indentation heads a section."""
    comments, sections = {}, {}
    for c in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(c):
            continue
        lines = inspect.getsource(c).splitlines()
        lines, key, section = lines[1 + next(i for i, l in enumerate(lines) if l.startswith('class ')):], None, None
        indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
        for line in lines:
            field = re.match(r'\s*(\w+)\s*:[^#]*(?:#\s*(.*))?$', line)
            comment = re.match(r'(\s*)#\s*(.*)$', line)
            if field:
                key = field[1]                  # a subclass's own comment, else its parent's
                comments[key] = field[2] or comments.get(key, '')
                if section:
                    sections[key], section = section, None
            elif comment and len(comment[1]) > indent and key:
                comments[key] = (comments[key] + ' ' + comment[2]).strip()
            elif comment:
                section, key = comment[2], None
    return comments, sections


def settings_help(cfg, extra=(), refuse=None):
    """The text --help prints: the script's docstring, then every setting of cfg with its value
    and comment, the extra flags, and the settings refused here with the reason."""
    comments, sections = setting_comments(type(cfg))
    doc = (sys.modules[type(cfg).__module__].__doc__ or '').strip()
    out = [doc, '', 'Settings (--key=value; a preset file sets several; the values shown are '
                    'the defaults as the other arguments change them):']
    for f in dataclasses.fields(cfg):
        if f.name in sections:
            out.append(f'  # {sections[f.name]}')
        value = getattr(cfg, f.name)
        value = json.dumps(value, separators=(',', ':')) if isinstance(value, dict) else value
        arg = f'--{f.name}' if value is None else f'--{f.name}={value}'
        note = ('(unset) ' if value is None else '') + comments.get(f.name, '')
        out.append(f'  {arg:<30} {note}'.rstrip())
    per_task = {name: [k for k in task_options(name) if k in extra] for name in TASKS}
    if any(per_task.values()):
        out.append('Task options, per --task (tasks.py):')
        out += [f'  {name:<12} ' + ' '.join(f'--{k}' for k in keys) for name, keys in per_task.items() if keys]
    flags = sorted(set(extra) - {k for keys in per_task.values() for k in keys})
    if flags:
        out.append('Also: ' + ', '.join(f'--{k}' for k in flags))
    for key, why in (refuse or {}).items():
        out.append(f'Not used here: --{key} ({why})')
    return '\n'.join(out)


def parse_value(value, current=None, key='value'):
    """A command-line string as the type of `current` (None: guess int, float, bool or string)."""
    try:
        if isinstance(current, bool):
            if value.lower() not in ('true', 'false', '1', '0'): raise ValueError
            return value.lower() in ('true', '1')
        if isinstance(current, int): return int(value)
        if isinstance(current, float): return float(value)
        if isinstance(current, dict): return json.loads(value)
    except (ValueError, json.JSONDecodeError):
        raise SystemExit(f'error: bad value {value!r} for {key} (expected {type(current).__name__})')
    if current is None:
        for cast in (int, float):
            try: return cast(value)
            except ValueError: pass
        return {'true': True, 'false': False}.get(value.lower(), value)
    return value


DTYPES = ('auto', 'bfloat16', 'float16', 'float32')


def pick_device(device='auto'):
    """'auto': cuda, else mps, else cpu. Any other name must be a device this machine has: a
    clear error here, not a traceback from the first tensor moved there."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
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
    our 2-core Xeon with AMX, 0.8M parameters, bf16 autocast trained 1.5x the tokens/s of float32);
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
