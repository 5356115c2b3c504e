"""
configurator.py: nanoGPT-style settings for every script, and nothing else (no torch, so that
`data.py` starts in a fraction of a second).

  parse_settings   a dataclass, preset files, --key=value overrides; unknown, repeated or
                   refused keys are errors that say why
  refuse_unused    settings that the chosen mode would ignore are an error that says why
                   (changed_settings: which of them differ from their defaults)
  settings_help    what --help prints: every setting with the comment written next to it
  parse_value      a command-line string as the type of the setting it sets
"""
import dataclasses, difflib, inspect, json, os, re, sys
from tasks import TASKS, task_options


def parse_settings(cfg, argv, extra=(), refuse=None):
    """A dataclass instance, then preset files (positional *.json arguments or --preset=path),
    then --key=value overrides, in order. An unknown key is an error that lists the valid ones.
    Keys named in `extra` are returned separately, typed by parse_value; keys in `refuse` ({key: why}) are an error
    that says why (a setting that exists elsewhere but means nothing here). A key given twice on
    the command line is an error too: one of the two values would be ignored (a preset's value
    overridden on the command line is the point of presets). --help (or -h) anywhere prints every
    setting, as the other arguments leave it, and exits."""
    fields = {f.name: f.type for f in dataclasses.fields(cfg)}
    refuse, extras, given = refuse or {}, {}, {}
    want_help = any(arg in ('--help', '-h') for arg in argv)
    argv = [arg for arg in argv if arg not in ('--help', '-h')]

    def set_(key, value, source):
        if key in refuse:
            raise SystemExit(f'error: --{key} is not used here: {refuse[key]}')
        if key in extra:
            extras[key] = parse_value(value) if isinstance(value, str) else value; return
        if key not in fields:
            valid = sorted(set(fields) | set(extra))
            close = difflib.get_close_matches(key, valid, n=1)     # a typo: name the likely one first
            raise SystemExit(f'error: unknown setting {key!r} in {source}.'
                             + (f' Did you mean {close[0]!r}?' if close else '') + ' Valid settings: ' + ', '.join(valid))
        current = getattr(cfg, key)
        if current is None and fields[key] in (bool, int, float):
            current = fields[key]()         # an unset setting is typed by its annotation, not guessed
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
            presets = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'presets')
            # a path, or a name in presets/ (with or without .json)
            path = next((p for p in (value, os.path.join(presets, value), os.path.join(presets, value + '.json'))
                         if os.path.isfile(p)), None)
            if path is None:
                names = sorted(n[:-5] for n in os.listdir(presets) if n.endswith('.json'))
                raise SystemExit(f'error: no preset {value!r}: not a file, nor a name in presets/ '
                                 f'({", ".join(names)})')
            try:
                with open(path) as f:
                    preset = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise SystemExit(f'error: cannot read preset {value!r}: {e}')
            if not isinstance(preset, dict):
                raise SystemExit(f'error: preset {value!r} must hold one JSON object of settings, '
                                 '{"key": value, ...}')
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


def changed_settings(cfg, keys):
    """Those of `keys` that cfg sets away from their defaults, as '--key'."""
    default = type(cfg)()
    return [f'--{key}' for key in keys if getattr(cfg, key) != getattr(default, key)]


def refuse_unused(cfg, keys, mode, why, extras=()):
    """Settings of `keys` given although `mode` ignores them (and any of `extras`, settings given
    outside cfg): an error that names them and says why, rather than a run that silently drops them."""
    unused = changed_settings(cfg, keys) + [f'--{key}' for key in extras]
    if unused:
        raise SystemExit(f'error: {mode} does not use {", ".join(unused)} ({why})')


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
