"""
tasks.py: the synthetic reasoning tasks every model in this repo trains and is judged on.

What it teaches: a task is (1) a seeded generator of (problem, answer) strings, (2) an exact
verifier that accepts *any* valid answer, (3) a fixed vocabulary and an encoding into one
fixed-length token sequence

    [ prompt tokens ... PAD ] [SEP] [ answer tokens ... PAD ]
                                    ^^^^^^^^^^^^^^^^^^^^^^^^^  answer_mask = True here

and (4) the task's standard text file format. Models only ever fill the answer positions;
the prompt stays clean. Five tasks: sudoku, sudoku_gen, countdown, zebra, path_star.
Files, splits and the command line are in data.py.
"""
import ast, inspect, json, math, re
import numpy as np

PAD, MASK, SEP = 0, 1, 2          # special token ids shared by every task
SPECIALS = ['<pad>', '<mask>', '<sep>']


# ----------------------------------------------------------------------------------------------
# The task interface. A task holds its options; examples are (problem, answer) strings.

class Task:
    name = ''
    split_answer = re.compile(r'.')           # how problem/answer strings split into tokens

    def tokenize(self, s):
        return self.split_answer.findall(s)

    def setup(self, symbols, prompt_len, answer_len):
        self.vocab = SPECIALS + list(symbols)
        self.stoi = {s: i for i, s in enumerate(self.vocab)}
        self.prompt_len, self.answer_len = prompt_len, answer_len
        self.seq_len = prompt_len + 1 + answer_len

    def config(self):
        """Everything needed to rebuild this task (stored in checkpoints)."""
        return dict(name=self.name, **self.options)

    def encode(self, problem, answer=None):
        """-> (ids int64 [seq_len], answer_mask bool [seq_len]). Without an answer, the answer
        positions are MASK (what a sampler starts from)."""
        p, a = self.tokenize(problem), self.tokenize(answer) if answer is not None else []
        if len(p) > self.prompt_len or len(a) > self.answer_len:
            raise ValueError(f'{self.name}: example longer than the task allows: {problem!r}')
        ids = np.full(self.seq_len, PAD, np.int64)
        ids[:len(p)] = [self.stoi[t] for t in p]
        ids[self.prompt_len] = SEP
        if answer is None:
            ids[self.prompt_len + 1:] = MASK
        else:
            ids[self.prompt_len + 1:self.prompt_len + 1 + len(a)] = [self.stoi[t] for t in a]
        answer_mask = np.zeros(self.seq_len, bool)
        answer_mask[self.prompt_len + 1:] = True
        return ids, answer_mask

    def decode_answer(self, ids):
        """Answer string from a full id sequence (PAD ends it; MASK shows as '?')."""
        out = []
        for i in map(int, ids[self.prompt_len + 1:]):
            if i == PAD: break
            out.append('?' if i == MASK else self.vocab[i] if i > SEP else '')
        return ''.join(out)

    def encode_batch(self, examples):
        pairs = [self.encode(p, a) for p, a in examples]
        return np.stack([x for x, _ in pairs]), np.stack([m for _, m in pairs])

    # file format: one example per line; subclasses override parse/format where needed
    def format_line(self, problem, answer=None):
        return problem if answer is None else f'{problem}={answer}'

    def parse_line(self, line):
        """-> (problem, answer or None). Raises ValueError with a short reason."""
        problem, _, answer = line.partition('=')
        self.check_problem(problem)
        return problem, (answer or None)

    def check_problem(self, problem):
        pass

    def failure(self, problem, answer):
        """None for a valid answer, else a short reason (tasks with a telling one override this)."""
        return None if self.verify(problem, answer) else 'invalid'

    def show(self, problem, answer=None):
        return f'problem: {problem}\nanswer:  {answer}'


# ----------------------------------------------------------------------------------------------
# Sudoku core: bitmask candidates. Digit d (1..n) is bit d-1. Used by sudoku and sudoku_gen.

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}      # grid size -> (box rows, box cols)

def sudoku_units(n):
    """Rows, columns and boxes as lists of cell indices; and, per cell, its 3 unit ids."""
    br, bc = BOXES[n]
    r, c = np.arange(n * n) // n, np.arange(n * n) % n
    b = (r // br) * (n // bc) + c // bc
    units = np.stack([np.flatnonzero(x == i) for x in (r, c, b) for i in range(n)])
    return units, np.stack([r, n + c, 2 * n + b], 1)

def sudoku_propagate(cand, units, cell_units, n):
    """Batched logic (naked + hidden singles) on candidate bitmasks cand (B, n*n) until a
    fixpoint. Every deduction is sound, so if a puzzle that has a solution ends with one
    candidate per cell, that solution is the only one: a fast uniqueness certificate."""
    cu0, cu1, cu2 = cell_units.T
    while True:
        single = (cand & (cand - 1)) == 0
        fixed_in_unit = np.bitwise_or.reduce(np.where(single, cand, 0)[:, units], axis=2)
        forbid = fixed_in_unit[:, cu0] | fixed_in_unit[:, cu1] | fixed_in_unit[:, cu2]
        new = np.where(single, cand, cand & ~forbid)
        g = new[:, units]                                   # (B, 3n, n): digits seen once / twice
        once = np.zeros(g.shape[:2], g.dtype); twice = once.copy()
        for k in range(n):
            twice |= once & g[:, :, k]; once |= g[:, :, k]
        only_place = once & ~twice
        hidden = new & (only_place[:, cu0] | only_place[:, cu1] | only_place[:, cu2])
        new = np.where(hidden != 0, hidden, new)
        if np.array_equal(new, cand):
            return cand
        cand = new

def sudoku_solve(grid, n, limit=2, rng=None):
    """Backtracking with bitmasks and most-constrained-cell first. grid: list of ints, 0 = blank.
    Returns up to `limit` solutions (lists). With rng, tries digits in random order (for fills)."""
    units, cell_units = sudoku_units(n)
    peers = [sorted(set(units[cell_units[i]].ravel()) - {i}) for i in range(n * n)]
    full = (1 << n) - 1
    grid, sols = list(grid), []

    def search():
        best, best_cand, best_count = -1, 0, n + 1
        for i in range(n * n):
            if grid[i] == 0:
                used = 0
                for p in peers[i]:
                    if grid[p]: used |= 1 << (grid[p] - 1)
                cand = full & ~used
                k = bin(cand).count('1')
                if k < best_count:
                    best, best_cand, best_count = i, cand, k
                    if k <= 1: break
        if best < 0:
            sols.append(list(grid)); return len(sols) >= limit
        digits = [d + 1 for d in range(n) if best_cand >> d & 1]
        if rng is not None: rng.shuffle(digits)
        for d in digits:
            grid[best] = d
            if search(): return True
        grid[best] = 0
        return False

    search(); return sols

def sudoku_conflicts(grid, n):
    """True if two equal non-zero digits share a row, column or box."""
    return any(len(v) != len(set(v)) for v in ([grid[i] for i in u if grid[i]] for u in sudoku_units(n)[0]))

def sudoku_random_grids(n, count, rng):
    """Random complete grids: one randomised backtracking fill per 16 grids, each copy then
    shuffled by validity-preserving symmetries (relabel digits; permute rows inside a band,
    bands, columns inside a stack, stacks; transpose when boxes are square)."""
    br, bc = BOXES[n]
    out = []
    while len(out) < count:
        base = np.array(sudoku_solve([0] * (n * n), n, limit=1, rng=rng)[0]).reshape(n, n)
        for _ in range(min(16, count - len(out))):
            g = np.concatenate([[0], rng.permutation(n) + 1])[base]
            rows = np.concatenate([b * br + rng.permutation(br) for b in rng.permutation(n // br)])
            cols = np.concatenate([s * bc + rng.permutation(bc) for s in rng.permutation(n // bc)])
            g = g[rows][:, cols]
            if br == bc and rng.random() < 0.5: g = g.T
            out.append(g.ravel())
    return np.stack(out)

def sudoku_make_puzzles(grids, givens, rng):
    """Remove cells from full grids until exactly `givens` remain, keeping a unique solution.
    Batched: start from a random subset of `givens` cells, add cells that logic cannot yet
    determine until the puzzle is logic-solvable, then dig back down to `givens`.
    Returns (puzzles, ok): ok[i] is False where the dig could not reach the target count."""
    B, N = grids.shape
    n = int(round(math.sqrt(N)))
    units, cell_units = sudoku_units(n)
    full, rows = (1 << n) - 1, np.arange(B)
    bits = (1 << (grids - 1)).astype(np.int32)
    solved = lambda given: ((lambda c: (((c & (c - 1)) == 0) & (c != 0)).all(1))(
        sudoku_propagate(np.where(given, bits, full).astype(np.int32), units, cell_units, n)))
    given = np.zeros((B, N), bool)
    np.put_along_axis(given, np.argsort(rng.random((B, N)), 1)[:, :givens], True, 1)
    while True:                                             # add phase
        cand = sudoku_propagate(np.where(given, bits, full).astype(np.int32), units, cell_units, n)
        undetermined = (cand & (cand - 1)) != 0
        todo = undetermined.any(1)
        if not todo.any(): break
        pick = np.argmax(np.where(undetermined, rng.random((B, N)), -1), 1)
        given[rows[todo], pick[todo]] = True
    order = np.argsort(np.where(given, rng.random((B, N)), 2.0), 1)
    for j in range(N):                                      # dig phase
        active = (given.sum(1) > givens) & given[rows, order[:, j]]
        if not active.any(): break
        trial = given.copy()
        trial[rows[active], order[active, j]] = False
        given = np.where((active & solved(trial))[:, None], trial, given)
    return np.where(given, grids, 0), given.sum(1) == givens


class Sudoku(Task):
    name = 'sudoku'

    def __init__(self, size=9, givens=None, layout='inplace'):
        if size not in BOXES:
            raise ValueError(f'sudoku size must be one of {sorted(BOXES)}, got {size}')
        if layout not in ('inplace', 'prompt'):
            raise ValueError("sudoku layout must be 'inplace' or 'prompt'")
        self.n = size
        givens = {4: 6, 6: 12, 9: 30}[size] if givens is None else givens
        if not 0 <= givens <= size * size:
            raise ValueError(f'givens must be in 0..{size * size}')
        self.options = dict(size=size, givens=givens, layout=layout)
        # inplace: [SEP] grid, the givens clean in place, only blank cells in the answer mask
        #          (short sequences; what diffusion models use).
        # prompt:  puzzle [SEP] full grid: a left-to-right model sees every given first (AR).
        self.setup([str(d) for d in range(1, 10)] + ['.'], size * size if layout == 'prompt' else 0, size * size)

    def encode(self, problem, answer=None):
        if self.options['layout'] == 'prompt':
            return super().encode(problem, answer)
        ids, answer_mask = super().encode('', answer if answer is not None else problem)
        blank = np.array([c == '.' for c in problem])
        answer_mask[1:] = blank
        if answer is None: ids[1:][blank] = MASK
        return ids, answer_mask

    def generate(self, count, rng):
        out, tries = [], 0
        while len(out) < count:
            grids = sudoku_random_grids(self.n, max(64, count - len(out)), rng)
            puzzles, ok = sudoku_make_puzzles(grids, self.options['givens'], rng)
            for p, g in zip(puzzles[ok], grids[ok]):
                out.append((''.join(str(d) if d else '.' for d in p), ''.join(map(str, g))))
            tries += len(grids)
            if not out and tries >= 4096:       # would loop for ever: say so instead
                raise ValueError(f'no {self.n}x{self.n} puzzle with {self.options["givens"]} givens in {tries} '
                                 'random grids: with so few givens, puzzles that naked and hidden singles '
                                 'solve uniquely (the only kind made here) are too rare; use more givens '
                                 '(on 9x9, 22 givens yield about 2 puzzles in 100 grids, 24 about half)')
        return out[:count]

    def verify(self, problem, answer):
        n = self.n
        if answer is None or len(answer) != n * n or not all(c in '123456789'[:n] for c in answer):
            return False
        # EXERCISE 6: a Sudoku verifier that accepts any valid answer
        grid = [int(c) for c in answer]
        if any(p != '.' and p != a for p, a in zip(problem, answer)):
            return False                                   # givens must be kept
        units, _ = sudoku_units(n)
        return all(len({grid[i] for i in u}) == n for u in units)
        # END EXERCISE 6

    def check_problem(self, problem):
        n = self.n
        if len(problem) != n * n:
            raise ValueError(f'expected {n * n} cells for a {n}x{n} sudoku, got {len(problem)}')
        bad = set(problem) - set('123456789'[:n] + '.')
        if bad:
            raise ValueError(f'characters outside the alphabet: {"".join(sorted(bad))!r} (a {n}x{n} puzzle '
                             f"holds the digits 1 to {n} and '.' or '0' for a blank)")
        if sudoku_conflicts([0 if c == '.' else int(c) for c in problem], n):
            raise ValueError('the givens already conflict (same digit twice in a row, column or box)')

    def parse_line(self, line):
        """'puzzle' or 'puzzle,solution', '.' or '0' for blanks; fields are split at whitespace.
        The puzzle is the first field, unless that is not n * n cells long and a later field is,
        with a blank: then the fields before it are an id ('hash puzzle rating': the Sudoku
        Exchange puzzle bank; a solution, which has no blank, is never taken for the puzzle; a
        puzzle of another size is, so that the error names its size). After the puzzle, a field
        as long as it is its solution ('puzzle<TAB>solution'); anything else is a comment."""
        words, cells = line.split() or [''], lambda w: w.split(',')[0]
        at = next((i for m in (self.n, *BOXES) for i, w in enumerate(words)
                   if len(cells(w)) == m * m and (i == 0 or set(cells(w)) & set('.0'))), 0)
        fields, after = words[at].split(','), words[at + 1:]
        if len(fields) > 2:
            raise ValueError('expected "puzzle" or "puzzle,solution"')
        if len(fields) == 1 and after and len(after[0]) == len(fields[0]):
            fields.append(after[0])
        problem = fields[0].replace('0', '.')
        self.check_problem(problem)
        # an answer is read as written: what a model wrote may hold any symbol of the vocabulary (a 7
        # on 6x6, a '.', a short row where it wrote PAD), and judging it is verify's job, not the reader's
        answer = fields[1] if len(fields) == 2 and fields[1] else None
        return problem, answer

    def format_line(self, problem, answer=None):
        return problem if answer is None else f'{problem},{answer}'

    def show(self, problem, answer=None, marks=None):
        """The puzzle and, if given, the answer beside it; marks {cell: char} overlay the answer."""
        grids = [self.grid(problem)] + ([self.grid(answer, marks)] if answer else [])
        return '\n'.join('      '.join(rows) for rows in zip(*grids))

    def grid(self, cells, marks=None):
        n, (br, bc) = self.n, BOXES[self.n]
        sep = '-+-'.join(['-' * (2 * bc - 1)] * (n // bc))
        lines = []
        for r in range(n):
            if r and r % br == 0: lines.append(sep)
            row = [(marks or {}).get(r * n + c) or cells[r * n + c] for c in range(n)]
            lines.append(' | '.join(' '.join(row[s * bc:(s + 1) * bc]) for s in range(n // bc)))
        return lines

    def cell_name(self, i):
        """Cell i (row by row, from 0) in Sudoku's usual notation, counted from 1: r3c2."""
        return f'r{i // self.n + 1}c{i % self.n + 1}'


class SudokuGen(Sudoku):
    """Unconditional generation of complete valid grids: empty prompt, the grid is the answer."""
    name = 'sudoku_gen'
    encode = Task.encode

    def __init__(self, size=9):
        if size not in BOXES:
            raise ValueError(f'sudoku size must be one of {sorted(BOXES)}, got {size}')
        self.n, self.options = size, dict(size=size)
        self.setup([str(d) for d in range(1, 10)], 0, size * size)

    def generate(self, count, rng):
        return [('', ''.join(map(str, g))) for g in sudoku_random_grids(self.n, count, rng)]

    def verify(self, problem, answer):
        return super().verify('.' * self.n ** 2, answer)

    def check_problem(self, problem):
        if problem: raise ValueError('sudoku_gen has no prompt')

    def parse_line(self, line):     # read as written, as sudoku's answers are (verify judges it)
        answer = line.split()[0]
        return '', None if set(answer) == {'.'} else answer      # a blank grid: no answer

    def format_line(self, problem, answer=None):
        # no answer (a model that wrote PAD first) as a blank grid, not a blank line: the reader
        # skips those, and the file would lose a row (--compare pairs files row by row). '.' is
        # not in this task's vocabulary, so a model cannot write a blank grid as its answer.
        return answer or '.' * self.n ** 2

    def show(self, problem, answer=None, marks=None):
        return '\n'.join(self.grid(answer or '.' * self.n ** 2, marks))


# Countdown's operations: a step 'a op b=c' has c = STEP_OPS[op](a, b); AST_OPS names them as Python parses them
STEP_OPS = {'+': int.__add__, '-': int.__sub__, '*': int.__mul__, '/': int.__floordiv__}
AST_OPS = {ast.Add: '+', ast.Sub: '-', ast.Mult: '*', ast.Div: '/'}


def expression_steps(expression):
    """A Countdown answer written as one expression ('(30 - (100 - 93))', or with '= 23' after
    it: how TinyZero and d1 write answers) as the step list it stands for ('100-93=7,30-7=23'),
    which verify then judges by the same rules (a number used twice, an inexact division, a value
    below 0 fail there). None if it is not an expression of + - * / over integers, or what
    follows '=' is not its value. Parsed, never run."""
    left, _, right = expression.partition('=')
    steps = []
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if not (isinstance(node, ast.BinOp) and type(node.op) in AST_OPS):
            raise ValueError('not + - * / over integers')
        a, b, op = value(node.left), value(node.right), AST_OPS[type(node.op)]
        if op == '/' and b == 0:
            raise ValueError('division by 0')
        c = STEP_OPS[op](a, b)
        steps.append(f'{a}{op}{b}={c}')
        return c
    try:
        result = value(ast.parse(left.strip(), mode='eval').body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return ','.join(steps) if steps and right.strip() in ('', str(result)) else None


class Countdown(Task):
    """Reach the target with the given numbers and + - * /; every step an integer.
    Problem 'n1,...,nk,target'; answer 'a-b=c,c*d=e,...' (a file's answer written as one
    expression, with brackets or spaces, is read as its steps: expression_steps; a list of steps,
    Stream of Search's "solution", as the steps joined). Held-out targets: a fixed fifth of the
    targets (by value) never appears in training data when heldout_targets is on."""
    name = 'countdown'
    split_answer = re.compile(r'\d+|.')      # numbers are tokens: '80', '-', '58', '=', ...

    def __init__(self, n_numbers=4, max_number=50, max_target=100, max_value=999, heldout_targets=False):
        if not 3 <= n_numbers <= 5:
            raise ValueError('countdown n_numbers must be 3, 4 or 5')
        if not max(max_number, max_target) <= max_value <= 9999:
            raise ValueError('need max_number, max_target <= max_value <= 9999')
        self.options = dict(n_numbers=n_numbers, max_number=max_number, max_target=max_target,
                            max_value=max_value, heldout_targets=heldout_targets)
        self.max_value = max_value                         # every number is one token: 0..max_value
        self.setup([str(i) for i in range(max_value + 1)] + list('+-*/=,'), 2 * n_numbers + 1, 6 * (n_numbers - 1) - 1)

    def is_heldout(self, target):
        return target % 5 == 0

    def generate(self, count, rng, split='train'):
        o, out = self.options, []
        while len(out) < count:
            nums = [int(x) for x in rng.integers(1, o['max_number'] + 1, o['n_numbers'])]
            pool, steps = list(nums), []
            while len(pool) > 1:
                i, j = rng.choice(len(pool), 2, replace=False)
                a, b = pool[i], pool[j]
                op = list(STEP_OPS)[rng.integers(4)]
                if op == '-' and a < b: a, b = b, a
                if op == '/' and (b == 0 or a % b): continue
                c = STEP_OPS[op](a, b)
                if c > self.max_value: continue
                steps.append(f'{a}{op}{b}={c}')
                pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [c]
            target = pool[0]
            if not 1 <= target <= o['max_target'] or target in nums: continue
            if o['heldout_targets'] and self.is_heldout(target) != (split != 'train'): continue
            out.append((','.join(map(str, nums + [target])), ','.join(steps)))
        return out

    def verify(self, problem, answer):
        *nums, target = [int(x) for x in problem.split(',')]
        pool = list(nums)
        if not answer: return False
        value = None
        for step in answer.split(','):
            m = re.fullmatch(r'(\d+)([-+*/])(\d+)=(\d+)', step)
            if not m: return False
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            for x in (a, b):
                if x not in pool: return False             # each number (or result) used once
                pool.remove(x)
            if op == '/' and (b == 0 or a % b): return False
            if c != STEP_OPS[op](a, b): return False
            pool.append(c); value = c
        return value == target

    def check_problem(self, problem):
        parts = problem.split(',')
        digits = all(p.isdigit() for p in parts)
        if len(parts) != self.options['n_numbers'] + 1 or not digits:
            got = f'{len(parts) - 1} numbers and a target' if digits else repr(problem)
            raise ValueError(f'expected {self.options["n_numbers"]} numbers and a target, comma separated; '
                             f'got {got} (a model reads only the count it was trained on)')
        if max(int(p) for p in parts) > self.max_value:
            raise ValueError(f'numbers must be at most {self.max_value}')

    def parse_line(self, line):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'broken JSON: {e.msg}') from None
        nums = obj.get('nums', obj.get('numbers')) if isinstance(obj, dict) else None
        if isinstance(nums, list) and 'target' in obj:
            # the other public form (Countdown-Tasks-3to4, TinyZero): {"nums": [...], "target": N}
            obj = dict(obj, input=','.join(map(str, nums + [obj['target']])))
        if not isinstance(obj, dict) or not isinstance(obj.get('input'), str):
            raise ValueError('expected an object with "input" (and optionally "output"), '
                             'or with "nums" (or "numbers") and "target" (and optionally "solution")')
        problem, answer = obj['input'], obj.get('output')
        solution = obj.get('solution')
        if answer is None and isinstance(solution, list) and all(isinstance(s, str) for s in solution):
            # Stream of Search's files: "solution": ["44-15=29", "79-29=50"], our steps as a list
            answer = ','.join(solution)
        answer = None if answer in (None, '') else str(answer)
        if answer and answer.isdigit() and len(problem.split(',')) == self.options['n_numbers']:
            # d1's countdown_cd3_test.jsonl: {"input": "30,100,93", "output": "23"}, the numbers
            # in "input" and the target as "output" (ours: numbers and target in, steps out)
            problem, answer = f'{problem},{answer}', None
        self.check_problem(problem)
        if answer and set(answer) & set('() '):
            # brackets or spaces: an expression from elsewhere, read as its steps. An answer this
            # repo's models could write (digits + - * / = ,) is read as written, so a file of
            # sample.py's answers reads back scoring as sample.py scored it
            answer = expression_steps(answer) or answer
        return problem, answer

    def format_line(self, problem, answer=None):
        return json.dumps({'input': problem, 'output': answer} if answer is not None else {'input': problem})


class Zebra(Task):
    """Einstein puzzles: n houses in a row, m attributes, each attribute a permutation of values
    0..n-1 over the houses. An entity 'a.v' is value v of attribute a. Clues:
      Sx,y  x and y in the same house     Xx,y  x and y not in the same house
      Lx,y  x directly left of y          Nx,y  x next to y
      Bx,y,z  y somewhere between x and z  Ax,h  x in house h  (position clue)
    Clues are added at random until the solver finds exactly one solution, then redundant
    clues are dropped. Answer: one row per attribute giving its value in each house, '|'-joined."""
    name = 'zebra'
    KINDS = 'SXLNBA'
    split_answer = re.compile(r'\d\.\d|[^,]')   # an entity 'a.v' is one token; commas are dropped

    def __init__(self, houses=4, attributes=4):
        if not (3 <= houses <= 6 and 3 <= attributes <= 6):
            raise ValueError('zebra sizes go from 3x3 to 6x6')
        self.n, self.m = houses, attributes
        self.options = dict(houses=houses, attributes=attributes)
        self.max_clues = houses * attributes                 # longer puzzles are regenerated
        entities = [f'{a}.{v}' for a in range(6) for v in range(6)]
        self.setup(entities + list('0123456789;|') + list(self.KINDS), 5 * self.max_clues, attributes * (houses + 1) - 1)

    @staticmethod
    def holds(kind, args, pos):
        """Does one clue hold for house positions pos[(a, v)]?"""
        p = [pos[e] for e in args[:3 if kind == 'B' else 2]] if kind != 'A' else [pos[args[0]]]
        if kind == 'S': return p[0] == p[1]
        if kind == 'X': return p[0] != p[1]
        if kind == 'L': return p[0] + 1 == p[1]
        if kind == 'N': return abs(p[0] - p[1]) == 1
        if kind == 'B': return p[0] < p[1] < p[2] or p[2] < p[1] < p[0]
        return p[0] == args[1]                               # 'A'

    def count_solutions(self, clues, limit=2):
        """Constraint propagation + backtracking. dom[(a, v)] is a bitmask of the houses value v
        of attribute a may occupy; clues prune domains to a fixpoint, then we branch on the
        smallest domain. Stops counting at `limit`."""
        n, m, full = self.n, self.m, (1 << self.n) - 1
        bits = lambda d: [h for h in range(n) if d >> h & 1]

        def revise(dom):
            changed = True
            while changed:
                changed = False
                for kind, args in clues:
                    if kind == 'A':
                        new = {args[0]: dom[args[0]] & (1 << args[1])}
                    elif kind == 'B':
                        x, y, z = args
                        ok = lambda p, q, r: [h for h in bits(dom[q]) if any(
                            a < h < c or c < h < a for a in bits(dom[p]) for c in bits(dom[r]))]
                        new = {y: sum(1 << h for h in ok(x, y, z))}
                        # an end x is fine at h if some y, z continue the order from there
                        for p, r in ((x, z), (z, x)):
                            new[p] = sum(1 << h for h in bits(dom[p]) if any(
                                (h < q < c or c < q < h) for q in bits(dom[y]) for c in bits(dom[r])))
                    else:
                        x, y = args
                        dx, dy = dom[x], dom[y]
                        if kind == 'S': new = {x: dx & dy, y: dx & dy}
                        elif kind == 'L': new = {x: dx & (dy >> 1), y: dy & (dx << 1) & full}
                        elif kind == 'N':
                            new = {x: dx & ((dy << 1) | (dy >> 1)) & full, y: dy & ((dx << 1) | (dx >> 1)) & full}
                        else:                                # 'X': differ once one side is fixed
                            new = {x: dx & ~dy if dy & (dy - 1) == 0 else dx,
                                   y: dy & ~dx if dx & (dx - 1) == 0 else dy}
                    for e, d in new.items():
                        if d != dom[e]:
                            if not d: return False
                            dom[e], changed = d, True
                for a in range(m):                           # each attribute is a permutation
                    for v in range(n):
                        d = dom[(a, v)]
                        if d & (d - 1) == 0:
                            for w in range(n):
                                if w != v and dom[(a, w)] & d:
                                    dom[(a, w)] &= ~d; changed = True
                                    if not dom[(a, w)]: return False
            return True

        found = [0]
        def search(dom):
            if not revise(dom): return False
            open_ = [e for e in dom if dom[e] & (dom[e] - 1)]
            if not open_:
                found[0] += 1; return found[0] >= limit
            e = min(open_, key=lambda e: bin(dom[e]).count('1'))
            for h in bits(dom[e]):
                child = dict(dom); child[e] = 1 << h
                if search(child): return True
            return False

        search({(a, v): full for a in range(m) for v in range(n)})
        return found[0]

    def random_clue(self, pos, rng):
        n, m = self.n, self.m
        ent = lambda: (int(rng.integers(m)), int(rng.integers(n)))
        at = {h: [e for e, p in pos.items() if p == h] for h in range(n)}
        while True:
            kind = self.KINDS[rng.integers(len(self.KINDS))]
            x = ent()
            if kind == 'A': return kind, (x, pos[x])
            h = pos[x]
            if kind == 'S': cands = [e for e in at[h] if e[0] != x[0]]
            elif kind == 'X': cands = [e for e in pos if pos[e] != h and e[0] != x[0]]
            elif kind == 'L': cands = at.get(h + 1, [])
            elif kind == 'N': cands = at.get(h - 1, []) + at.get(h + 1, [])
            else:                                            # 'B': pick the middle then an end
                cands = [e for e in pos if pos[e] > h + 1]
                if not cands: continue
                z = cands[rng.integers(len(cands))]
                mids = [e for e in pos if h < pos[e] < pos[z]]
                y = mids[rng.integers(len(mids))]
                return kind, (x, y, z) if rng.random() < 0.5 else (z, y, x)
            if cands: return kind, (x, cands[rng.integers(len(cands))])

    def generate(self, count, rng):
        out = []
        while len(out) < count:
            grid = [rng.permutation(self.n) for _ in range(self.m)]   # grid[a][h] = value
            pos = {(a, int(grid[a][h])): h for a in range(self.m) for h in range(self.n)}
            clues = []
            while self.count_solutions(clues) > 1:
                clue = self.random_clue(pos, rng)
                if clue not in clues: clues.append(clue)
            for clue in list(clues):                         # drop clues that are not needed
                rest = [c for c in clues if c != clue]
                if self.count_solutions(rest) == 1: clues = rest
            if len(clues) > self.max_clues: continue
            out.append((self.format_clues(clues), '|'.join(''.join(map(str, g)) for g in grid)))
        return out

    @staticmethod
    def format_clues(clues):
        ent = lambda e: f'{e[0]}.{e[1]}'
        return ';'.join(k + ','.join(ent(a) for a in args) if k != 'A' else f'A{ent(args[0])},{args[1]}'
                        for k, args in clues)

    def parse_clues(self, problem):
        clues = []
        for part in problem.split(';'):
            m = re.fullmatch(r'([SXLNB])(\d\.\d(?:,\d\.\d)+)|A(\d)\.(\d),(\d)', part)
            if not m: raise ValueError(f'clue does not parse: {part!r}')
            if m[1]:
                ents = tuple(tuple(int(x) for x in e.split('.')) for e in m[2].split(','))
                if len(ents) != (3 if m[1] == 'B' else 2): raise ValueError(f'wrong arity: {part!r}')
                clues.append((m[1], ents))
            else:
                ents = ((int(m[3]), int(m[4])),)
                clues.append(('A', (ents[0], int(m[5]))))
            if any(a >= self.m or v >= self.n for a, v in ents):
                raise ValueError(f'entity out of range in {part!r}')
        return clues

    check_problem = parse_clues

    def verify(self, problem, answer):
        if not answer: return False
        rows = answer.split('|')
        if len(rows) != self.m or any(sorted(r) != [str(v) for v in range(self.n)] for r in rows):
            return False
        pos = {(a, int(r[h])): h for a, r in enumerate(rows) for h in range(self.n)}
        return all(self.holds(k, args, pos) for k, args in self.parse_clues(problem))

    def show(self, problem, answer=None):
        lines = ['clues: ' + problem.replace(';', '  ')]
        if answer:
            lines.append('house      ' + ' '.join(str(h) for h in range(self.n)))
            lines += [f'attr {a}:    ' + ' '.join(r) for a, r in enumerate(answer.split('|'))]
        return '\n'.join(lines)


class PathStar(Task):
    """Path-star graphs (Bachmann and Nagarajan, 2024): a source with `degree` arms of `arm_length`
    nodes each, node labels drawn from 0..n_nodes-1. `arm_length` counts the nodes *after* the
    source; their files name a graph by its path length *including* the source, so their
    "path length 5" is arm_length=4 here. Input: the shuffled directed edge list, then source and goal (the last
    node of one arm). Answer: the path source,...,goal. Line format a,b|c,d|.../source,goal=path.
    min_arm_length < arm_length mixes sizes in one dataset: each graph's arms are all of one length
    drawn uniformly from min_arm_length..arm_length, padded to the longest (PAD); None: arm_length."""
    name = 'path_star'
    split_answer = re.compile(r'\d+|.')

    def __init__(self, degree=3, arm_length=5, n_nodes=50, min_arm_length=None):
        if degree < 1 or arm_length < 1:
            raise ValueError('degree and arm_length must be at least 1')
        if n_nodes < degree * arm_length + 1:
            raise ValueError('n_nodes must be at least degree * arm_length + 1')
        if min_arm_length is not None and not 1 <= min_arm_length <= arm_length:
            raise ValueError('min_arm_length must be from 1 to arm_length')
        self.options = dict(degree=degree, arm_length=arm_length, n_nodes=n_nodes)
        if min_arm_length not in (None, arm_length):   # kept out of options otherwise: old checkpoints match
            self.options['min_arm_length'] = min_arm_length
        self.arm_lengths = range(self.options.get('min_arm_length', arm_length), arm_length + 1)   # from the options
        n_edges = degree * arm_length
        self.setup([str(i) for i in range(n_nodes)] + list(',|/'), 4 * n_edges + 3, 2 * arm_length + 1)

    def generate(self, count, rng):
        d, N = self.options['degree'], self.options['n_nodes']
        out = []
        for _ in range(count):
            # (one draw fewer without a mix, so the graphs of an unmixed task stay what they were)
            l = self.arm_lengths[0] if len(self.arm_lengths) == 1 else int(rng.choice(self.arm_lengths))
            labels = [int(x) for x in rng.choice(N, d * l + 1, replace=False)]
            source, arms = labels[0], [labels[1 + k * l:1 + (k + 1) * l] for k in range(d)]
            edges = [(a, b) for arm in arms for a, b in zip([source] + arm[:-1], arm)]
            edges = [edges[i] for i in rng.permutation(len(edges))]
            goal_arm = arms[rng.integers(d)]
            problem = '|'.join(f'{a},{b}' for a, b in edges) + f'/{source},{goal_arm[-1]}'
            out.append((problem, ','.join(map(str, [source] + goal_arm))))
        return out

    def parse_problem(self, problem):
        edges_s, _, ends = problem.partition('/')
        try:
            edges = [tuple(int(x) for x in e.split(',')) for e in edges_s.split('|')]
            source, goal = (int(x) for x in ends.split(','))
        except ValueError:
            raise ValueError('edge list does not parse (expected a,b|c,d|.../source,goal)') from None
        if any(len(e) != 2 for e in edges):
            raise ValueError('every edge needs exactly two nodes')
        if max(max(map(max, edges)), source, goal) >= self.options['n_nodes']:
            raise ValueError(f'node labels must be below n_nodes={self.options["n_nodes"]}')
        return edges, source, goal

    def check_problem(self, problem):
        edges, _, _ = self.parse_problem(problem)
        counts = [self.options['degree'] * l for l in self.arm_lengths]
        if len(edges) not in counts:
            raise ValueError(f'expected {" or ".join(map(str, counts))} edges')

    def verify(self, problem, answer):
        return self.failure(problem, answer) is None

    def failure(self, problem, answer):
        """None for a path from the source to the goal along edges, else why not. 'wrong arm' is
        the Clever-Hans failure: the first step leaves the source on an arm that does not lead to
        the goal (a guess), and the edges are followed from there."""
        edges, source, goal = self.parse_problem(problem)
        try:
            path = [int(x) for x in answer.split(',')]
        except (ValueError, AttributeError):
            return 'not a list of nodes'
        if path[0] != source:
            return 'does not start at the source'
        edges = set(edges)
        hops = next((i for i, e in enumerate(zip(path, path[1:])) if e not in edges), len(path) - 1)
        if hops == len(path) - 1 and path[-1] == goal:
            return None
        if hops == 0:
            return 'no step along an edge'
        parent, first = {b: a for a, b in edges}, goal      # the goal's arm, traced back to the source
        while parent.get(first, source) != source:
            first = parent[first]
        arm = 'right' if path[1] == first else 'wrong'
        return f'{arm} arm, {hops} of {len(path) - 1} steps along edges'


TASKS = {t.name: t for t in (Sudoku, SudokuGen, Countdown, Zebra, PathStar)}

def task_options(name):
    """The option names a task accepts (its constructor's parameters)."""
    return list(inspect.signature(TASKS[name].__init__).parameters)[1:] if name in TASKS else []

def get_task(name, **options):
    """get_task('sudoku', size=6, givens=14) -> a Task. Unknown names or options raise."""
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}; choose from {", ".join(TASKS)}')
    valid = task_options(name)
    bad = [k for k in options if k not in valid]
    if bad:
        raise ValueError(f'task {name} has no option(s) {bad}; valid: {valid}')
    return TASKS[name](**options)
