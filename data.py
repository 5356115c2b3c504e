"""
data.py: datasets from tasks: standard files in and out, deterministic generation on all cores,
content-disjoint train/val/test splits cached on disk, and the command line.

    python data.py --task=sudoku --size=9 --givens=30 --n=1000 --seed=0 --out=puzzles.txt
    python data.py --task=sudoku --size=9 --check=answers.txt     # last line: one JSON object
    python data.py --task=sudoku --size=9 --check=a.txt --compare=b.txt   # b against a, puzzle by puzzle
    python data.py --task=zebra --show --n=1
    python data.py --bench                                        # examples generated per second
"""
import bz2, csv, gzip, hashlib, io, json, lzma, math, os, re, signal, sys, tempfile, threading, time, zipfile, zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
import numpy as np
from tqdm import tqdm
from configurator import parse_settings, refuse_unused
from tasks import BOXES, TASKS, get_task, task_options

DATA_VERSION = 1                  # bump when a generator in tasks.py changes: stale caches are ignored


class TaskFormatError(ValueError):
    """A malformed input line; the message names the file and the line number."""


# Sudoku CSV headers seen in public files: Kaggle's 1M (quizzes,solutions), the 3M / 9M sets
# (id,puzzle,solution,...), sudoku-extreme (source,question,answer,rating); TSV the same.
PUZZLE_COLUMNS, SOLUTION_COLUMNS = ('puzzle', 'quiz', 'question'), ('solution', 'answer')


def unzip(data):
    """The one file a zip holds (a zip of several is refused: which one would be the puzzles?)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = [n for n in z.namelist() if not n.endswith('/')]
        if len(names) != 1:
            raise TaskFormatError(f'a zip file must hold exactly one file, this one holds {len(names)}')
        return z.read(names[0])


COMPRESSED = {b'\x1f\x8b': ('gzip', gzip.decompress), b'BZh': ('bzip2', bz2.decompress),
              b'\xfd7zXZ\x00': ('xz', lzma.decompress), b'PK\x03\x04': ('zip', unzip)}   # first bytes -> format


def shown(path):
    """A file's name in messages: '-' is the standard input."""
    return 'stdin' if path == '-' else path


def read_lines(path):
    """The lines of a text file ('-': the standard input), plain, compressed (gzip, bzip2, xz) or
    a zip holding one file (public puzzle sets are often shipped compressed; told apart by their
    first bytes, not by the name), with a byte-order mark dropped and line ends kept for the csv
    reader. Not UTF-8, or damaged (a download cut short): TaskFormatError."""
    if path == '-':
        data = sys.stdin.buffer.read()
    else:
        with open(path, 'rb') as f:
            data = f.read()
    path = shown(path)
    kind, decompress = next((v for magic, v in COMPRESSED.items() if data.startswith(magic)), (None, None))
    try:
        data = decompress(data) if kind else data
    except TaskFormatError as e:
        raise TaskFormatError(f'{path}: {e}') from None
    except (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise TaskFormatError(f'{path}: a damaged {kind} file ({e})') from None
    try:
        return list(io.StringIO(data.decode('utf-8-sig'), newline=''))
    except UnicodeDecodeError as e:
        raise TaskFormatError(f'{path}: not a UTF-8 text file (byte {e.start} is {data[e.start:e.start + 1]!r}); '
                              'give puzzles as text, compressed text or a zip of one file') from None


def read_examples(task, path, skip_bad=False, limit=None):
    """Read a file in the task's format -> list of (problem, answer or None), the first `limit`
    of them (all if None; lines after the limit are not checked).
    A bad line raises TaskFormatError('path:line: reason'); with skip_bad=True bad lines are
    skipped and returned as a list of messages: (examples, errors). A file with no example to read
    raises TaskFormatError too. path '-' reads the standard input."""
    examples, errors = [], []
    lines, path = read_lines(path), shown(path)
    first = ''.join(lines[:1])
    delimiter = next((d for d in ',\t;' if d in first), ',')      # CSV, TSV, or CSV as Excel writes it in Europe
    header = next(csv.reader(lines[:1], delimiter=delimiter), [])
    column = lambda words: next((h for h in header if any(w in h.strip().lower() for w in words)), None)
    pcol, scol = column(PUZZLE_COLUMNS), column(SOLUTION_COLUMNS)
    if task.name.startswith('sudoku') and pcol:    # CSV with a header (PUZZLE_COLUMNS, SOLUTION_COLUMNS)
        reader = csv.DictReader(lines[1:], fieldnames=header, delimiter=delimiter)
        rows = ((i + 2, row[pcol] + (',' + row[scol] if scol and row.get(scol) else '')) for i, row in enumerate(reader))
    elif task.name == 'sudoku' and is_grid_file(lines, task.n):   # a puzzle over n lines (Project Euler 96)
        rows = sudoku_grids(lines, task.n)
    elif task.name == 'countdown' and ''.join(lines[:1]).lstrip().startswith('['):   # a JSON array, not jsonl
        try:
            items = json.loads(''.join(lines))
        except json.JSONDecodeError as e:
            raise TaskFormatError(f'{path}: starts with [ but is not a JSON array ({e.msg}, line {e.lineno})') from None
        rows = ((f'item {i + 1}', json.dumps(obj)) for i, obj in enumerate(items))
    else:
        rows = ((i + 1, line) for i, line in enumerate(lines))
    for lineno, line in rows:
        if limit is not None and len(examples) >= limit: break
        line = line.strip()
        if not line or line.startswith('#'): continue
        try:
            examples.append(task.parse_line(line))
        except (ValueError, KeyError, TypeError) as e:
            msg = f'{path}:{lineno}: {e}'
            if not skip_bad: raise TaskFormatError(msg) from None
            errors.append(msg)
    if not examples:     # not a 0-of-0 score: an empty or all-malformed file is a mistake to report
        why = f'no line could be read ({len(errors)} malformed; the first: {errors[0]})' if errors else \
              'it has no examples (only blank or # lines)'
        raise TaskFormatError(f'{path}: {why}')
    return (examples, errors) if skip_bad else examples

GRID_TITLE = re.compile(r'(grid|puzzle|sudoku)\b', re.IGNORECASE)     # 'Grid 01' (Project Euler 96)


def grid_row(line):
    """A line of a grid file as its cells (spaces and the '|' between boxes dropped); None for a
    line between puzzles: blank, a '#' comment, a title such as 'Grid 01', or a ruler of '='
    (Norvig's easy50.txt); '' for a box border (sudoku_grids passes it over where one belongs),
    Simple Sudoku's frame '*-----------*' included."""
    row = ''.join(line.split())
    if not row or row.startswith('#') or GRID_TITLE.match(line.strip()) or not row.strip('='):
        return None
    return '' if not row.strip('-+|*') else row.replace('|', '')     # '------+------' is a border


def is_grid_file(lines, n):
    """Whether a Sudoku file writes each puzzle over n lines of n cells: its first row is n cells."""
    return len(next((row for row in map(grid_row, lines) if row), '')) == n


def sudoku_grids(lines, n):
    """(line number, puzzle as one line) for puzzles written as n rows of n cells (spaces between
    cells, and borders between boxes, allowed), such as Project Euler 96's sudoku.txt: a 'Grid 01'
    line, then 9 rows; or Norvig's easy50.txt: 9 rows, then a ruler of '='. A line between
    puzzles, a full grid, or a box border where none belongs ends a puzzle. Any other line of
    another length, and a puzzle cut short, are passed on as they are, for parse_line to report:
    nothing is skipped unannounced."""
    block, start, band_start = [], None, 0      # band_start: the block's length at its last box border
    for i, line in enumerate(lines, 1):
        row = grid_row(line)
        if row == '':                           # a box border: between grids, or after whole bands of boxes
            rows_since = len(block) - band_start
            if not block or (rows_since > 0 and rows_since % BOXES[n][0] == 0):
                band_start = len(block)
                continue
            row = None                          # a row missing above it: the puzzle ends, to be reported
        if row is None:
            if block: yield start, ''.join(block)
            block = []
        elif len(row) != n:                     # the puzzle it was part of is not read either
            yield i, row
            block = []
        else:
            if not block:
                start, band_start = i, 0
            block.append(row)
            if len(block) == n:
                yield start, ''.join(block)
                block = []
    if block: yield start, ''.join(block)


def check_writable(path, what, purpose, folder=False):
    """A file or folder (`folder`: one to be made, as out_dir) that cannot be written is an error
    now, not after minutes of work. The nearest existing folder on the path must take a file: one is
    made there and removed at once (so nothing is left), which finds a read-only disk too, where the
    permission bits alone would say yes (to root, they always do). Missing folders are made later."""
    full = os.path.abspath(path)
    if not folder and (os.path.isdir(full) or path.endswith(('/', os.sep))):
        raise SystemExit(f'error: {what} {path!r} is a folder: name a file to {purpose}')
    nearest = full if folder else os.path.dirname(full)
    while not os.path.exists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise SystemExit(f'error: {what} {path!r} cannot {purpose}: {nearest} is a file')
    try:
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as e:
        raise SystemExit(f'error: {what} {path!r} cannot {purpose}: {nearest} is not writable ({e.strerror})')


def write_examples(task, path, examples):
    """One line per example, in the task's file format; written whole or not at all (a .tmp file,
    then renamed), in a folder made if missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        for problem, answer in examples:
            f.write(task.format_line(problem, answer) + '\n')
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Generation, splits and the on-disk cache

@contextmanager
def on_ctrl_c(handler):
    """Ctrl-C (SIGINT) goes to `handler` inside the block, and as before after it. With
    signal.SIG_IGN, processes started inside ignore Ctrl-C for good (an ignored signal stays ignored
    in a new program, and Python then leaves it so): the process that started them takes it and
    stops them, with one message, not a traceback from each (even one still importing)."""
    if threading.current_thread() is not threading.main_thread():
        yield                    # signals can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _generate_chunk(args):
    config, seed, chunk, count, split = args
    task = get_task(**config)
    rng = np.random.default_rng([seed, chunk])        # same seed -> same data on any machine
    if task.name == 'countdown':
        return task.generate(count, rng, split=split)
    return task.generate(count, rng)

SPLITS = ('train', 'val', 'test')

def generate(task, count, seed=0, split='train', workers=None, chunk_size=512, progress=False):
    """`count` examples, deterministic for (task options, seed, split) whatever the worker count:
    chunk k always uses rng seeded with (seed, split, k). progress: a bar over the chunks (9x9
    Sudoku with unique solutions takes minutes for 200,000)."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {", ".join(SPLITS)}, not {split!r}')
    split_id = SPLITS.index(split)
    jobs = [(task.config(), seed * 3 + split_id, k, min(chunk_size, count - k * chunk_size), split)
            for k in range(math.ceil(count / chunk_size))]
    if workers is None:          # small requests are faster in-process than starting workers
        workers = os.cpu_count() if len(jobs) > 4 else 1
    workers = min(workers, len(jobs))
    try:
        if workers > 1:          # 'spawn': forking a process that already runs torch threads can hang
            with on_ctrl_c(signal.SIG_IGN):
                pool = get_context('spawn').Pool(workers)
            with pool:           # imap keeps the chunks in order
                chunks = list(tqdm(pool.imap(_generate_chunk, jobs), total=len(jobs), unit='chunk', leave=False,
                                   desc=f'generating {count} {task.name} {split} examples', disable=not progress))
        else:
            chunks = [_generate_chunk(j) for j in jobs]
    except KeyboardInterrupt:
        raise SystemExit(f'stopped by Ctrl-C while generating {count} {task.name} {split} examples: '
                         'nothing was written') from None
    return [ex for c in chunks for ex in c]

def make_splits(task, n_train, n_val, n_test, seed=0, progress=False):
    """Train/val/test disjoint *by content*: duplicates are dropped and no problem appears in
    two splits (evaluation splits are generated first and win)."""
    seen, splits = set(), {}
    for split, n in (('test', n_test), ('val', n_val), ('train', n_train)):
        out, extra = [], 0
        while len(out) < n:
            for ex in generate(task, n - len(out) + extra, seed + 1000 * extra, split, progress=progress):
                key = ex[0] or ex[1]                        # the problem (the grid for sudoku_gen)
                if key not in seen and len(out) < n:
                    seen.add(key); out.append(ex)
            extra += 1
            if extra > 50:
                raise RuntimeError(f'could not find {n} distinct {task.name} examples; the task is too small')
        splits[split] = out
    return splits

def load_splits(task, n_train, n_val, n_test, seed=0, data_dir='data', progress=False):
    """make_splits with an on-disk cache keyed by task options, sizes and seed."""
    key = json.dumps(dict(task=task.config(), sizes=[n_train, n_val, n_test], seed=seed, v=DATA_VERSION), sort_keys=True)
    path = os.path.join(data_dir, f'{task.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json')
    if os.path.exists(path):
        with open(path) as f:
            return {k: [tuple(ex) for ex in v] for k, v in json.load(f)['splits'].items()}
    splits = make_splits(task, n_train, n_val, n_test, seed, progress)
    os.makedirs(data_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'            # data-parallel processes may write at once
    with open(tmp, 'w') as f:
        json.dump(dict(key=json.loads(key), splits=splits), f)
    os.replace(tmp, path)
    return splits


# ----------------------------------------------------------------------------------------------
# Two decoders' answers to the same puzzles, compared puzzle by puzzle

def paired_difference(base, other):
    """Accuracy of `other` minus that of `base` on the same examples (lists of solved or not), with
    the half-width of its 95% interval from the per-example differences (+1 won, -1 lost, 0 same):
    puzzles flipping both ways, not the accuracies, are what make a small difference uncertain.
    -> (difference, half_width, lost, won)"""
    # EXERCISE 8: the difference, its 95% half-width from the per-puzzle differences, lost and won
    n = len(base)
    won = sum(o and not b for b, o in zip(base, other)); lost = sum(b and not o for b, o in zip(base, other))
    d = (won - lost) / n
    return d, 1.96 * math.sqrt(max((won + lost) / n - d * d, 0.0) / n), lost, won
    # END EXERCISE 8


def answer_failures(task, examples):
    """Why each answer fails, in order: None for a valid one, 'no answer' for a puzzle without one,
    else the task's reason (--check counts them; --compare reads which are None)."""
    return ['no answer' if a is None else task.failure(p, a) for p, a in examples]


def compare(task, base_path, base, base_right, other_path, other):
    """--compare: the second file's answers against the first's (base_right: which of those are
    valid), puzzle by puzzle, on the same puzzles in the same order: its accuracy minus the
    first's, with the paired 95% interval."""
    if len(other) != len(base):
        sys.exit(f'error: {other_path} holds {len(other)} puzzles and {base_path} {len(base)}: '
                 'a paired comparison needs the same puzzles in the same order')
    for i, ((p, _), (q, _)) in enumerate(zip(base, other)):
        if task.format_line(p) != task.format_line(q):
            sys.exit(f'error: puzzle {i + 1} differs between {base_path} and {other_path}: '
                     'a paired comparison needs the same puzzles in the same order')
    right = [f is None for f in answer_failures(task, other)]
    d, half, lost, won = paired_difference(base_right, right)
    print(f'{sum(right)} of {len(other)} answers valid in {other_path}: {100 * d:+.1f} +- {100 * half:.1f} '
          f'points against {base_path} (95% paired interval; lost {lost}, won {won})')
    return dict(valid=sum(right), difference=d, half_width=half, lost=lost, won=won)


# ----------------------------------------------------------------------------------------------
# Command line

@dataclass
class TasksCLI:
    task: str = 'sudoku'
    n: int = 10                 # examples to generate
    seed: int = 0               # the same seed gives the same examples on any machine
    split: str = 'train'        # train | val | test (countdown's held-out targets differ)
    out: str = ''               # write the examples here instead of printing them
    check: str = ''             # verify the answers in this file instead of generating
    skip_bad: bool = False      # with --check: skip and count malformed lines
    compare: str = ''           # with --check: answers to the same puzzles, compared puzzle by puzzle
    show: bool = False          # print examples in a readable layout
    bench: bool = False         # examples generated per second, every task


def main(argv):
    args, options = parse_settings(TasksCLI(), argv, extra=sorted({p for t in TASKS for p in task_options(t)}))
    if args.bench:
        refuse_unused(args, ['task', 'n', 'seed', 'split', 'out', 'check', 'skip_bad', 'compare', 'show'], '--bench',
                      'it times every task at its own settings', extras=options)
        return bench()
    if args.check:
        refuse_unused(args, ['n', 'seed', 'split', 'out', 'show'], '--check', 'it reads answers from a file '
                      'and generates nothing')
    else:
        refuse_unused(args, ['skip_bad', 'compare'], 'generating', 'it reads a --check file')
    try:
        task = get_task(args.task, **options)
    except (ValueError, TypeError) as e:
        sys.exit(f'error: {e}')
    if args.check:
        def read(path):
            result = read_examples(task, path, skip_bad=args.skip_bad)
            return result if args.skip_bad else (result, [])
        try:
            examples, errors = read(args.check)
            other, other_errors = read(args.compare) if args.compare else ([], [])
        except (TaskFormatError, OSError) as e:
            sys.exit(f'error: {e}')
        for e in errors + other_errors: print('skipped', e)
        outcomes = answer_failures(task, examples)
        failures = Counter(outcomes)
        valid = failures.pop(None, 0)
        print(f'{valid} of {len(examples)} answers valid')
        for reason, count in failures.most_common(): print(f'  {count} {reason}')
        result = {'task': task.name, 'n': len(examples), 'valid': valid, 'skipped': len(errors),
                  'failures': dict(failures)}
        if args.compare:
            result['compare'] = dict(compare(task, args.check, examples, [o is None for o in outcomes], args.compare,
                                             other), skipped=len(other_errors))
        print(json.dumps(result))
        return
    if args.n < 1:
        sys.exit(f'error: --n must be at least 1, got {args.n}')
    if args.out:
        check_writable(args.out, '--out', 'hold the examples')
    try:
        examples = generate(task, args.n, args.seed, args.split, progress=True)
    except ValueError as e:                    # an unknown split, or a task that cannot make these examples
        sys.exit(f'error: {e}')
    if args.show:
        for p, a in examples: print(task.show(p, a), end='\n\n')
    if args.out:
        write_examples(task, args.out, examples)
        print(f'wrote {len(examples)} {task.name} examples to {args.out}')
    elif not args.show:
        for p, a in examples: print(task.format_line(p, a))

def bench():
    """Examples per second for each task (all cores, deterministic chunks)."""
    for name, options, n in [('sudoku', dict(size=9, givens=30), 4096), ('sudoku', dict(size=6, givens=14), 4096),
                             ('sudoku_gen', dict(size=9), 4096), ('countdown', {}, 4096),
                             ('zebra', dict(houses=4, attributes=4), 256), ('zebra', dict(houses=6, attributes=6), 16),
                             ('path_star', {}, 4096)]:
        task = get_task(name, **options)
        t = time.time()
        generate(task, n, seed=123)
        dt = time.time() - t
        print(f'{name:10s} {json.dumps(options):32s} {n / dt:10.0f} examples/s  ({n} in {dt:.1f}s, {os.cpu_count()} cores)')

if __name__ == '__main__':
    main(sys.argv[1:])
