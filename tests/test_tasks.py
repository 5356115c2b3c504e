"""tasks.py and data.py: generators verify, corruptions are rejected, formats round-trip, splits are disjoint."""
import bz2, gzip, io, json, lzma, os, signal, subprocess, sys, zipfile
import numpy as np
import pytest
from data import TaskFormatError, generate, load_splits, make_splits, paired_difference, read_examples, write_examples
from tasks import MASK, PAD, SEP, get_task, sudoku_propagate, sudoku_solve, sudoku_units

CONFIGS = [('sudoku', dict(size=4, givens=6)), ('sudoku', dict(size=6, givens=14)),
           ('sudoku', dict(size=9, givens=30)), ('sudoku_gen', dict(size=6)),
           ('countdown', dict(n_numbers=4)), ('zebra', dict(houses=3, attributes=3)),
           ('zebra', dict(houses=4, attributes=4)), ('path_star', dict(degree=3, arm_length=4, n_nodes=30))]


def corrupt(task, problem, answer, rng):
    """Change one unit of the answer: a cell, a digit, an edge."""
    if task.name.startswith('sudoku'):
        i = int(rng.integers(len(answer)))
        d = str(int(answer[i]) % task.n + 1)
        return answer[:i] + d + answer[i + 1:]
    if task.name == 'countdown':
        steps = answer.split(',')
        a, rest = steps[-1].split('=')
        steps[-1] = f'{a}={int(rest) + 1}'
        return ','.join(steps)
    if task.name == 'zebra':
        rows = answer.split('|')
        r = rows[0]
        rows[0] = r[1] + r[0] + r[2:]                      # swap two houses of attribute 0
        return '|'.join(rows)
    path = answer.split(',')
    path[len(path) // 2] = str((int(path[len(path) // 2]) + 1) % task.options['n_nodes'])
    return ','.join(path)


def test_generation_is_the_same_on_any_number_of_workers(capsys):
    """Chunk k has its own seed and the pool returns chunks in order: two processes (with the
    progress bar on) give the examples one process gives, in the same order."""
    task = get_task('sudoku', size=4, givens=6)
    one = generate(task, 20, seed=3, workers=1, chunk_size=4)
    assert generate(task, 20, seed=3, workers=2, chunk_size=4, progress=True) == one
    assert 'generating 20 sudoku train examples' in capsys.readouterr().err
    assert len(set(one)) > 1


@pytest.mark.parametrize('name,options', CONFIGS)
def test_generated_examples_verify_and_corruptions_fail(name, options):
    task = get_task(name, **options)
    rng = np.random.default_rng(0)
    examples = generate(task, 12 if name != 'zebra' else 6, seed=1, workers=1)
    for problem, answer in examples:
        assert task.verify(problem, answer), (problem, answer)
        assert not task.verify(problem, corrupt(task, problem, answer, rng))
        ids, answer_mask = task.encode(problem, answer)
        assert ids.shape == (task.seq_len,) and ids[task.prompt_len] == SEP
        assert answer_mask.any() and not answer_mask[:task.prompt_len + 1].any()
        assert task.decode_answer(ids) == answer            # encoding round-trips
        masked, _ = task.encode(problem)
        assert (masked[answer_mask] == MASK).all() and (masked[~answer_mask] == ids[~answer_mask]).all()


def test_same_seed_same_data_any_worker_count():
    task = get_task('sudoku', size=6, givens=14)
    a = generate(task, 600, seed=3, workers=1, chunk_size=256)
    b = generate(task, 600, seed=3, workers=2, chunk_size=256)
    assert a == b and generate(task, 600, seed=4, workers=1, chunk_size=256) != a


def test_every_chunk_and_split_draws_its_own_examples():
    """No chunk repeats another's draws and the splits come from different streams: a reused
    stream would fill a large dataset with copies (make_splits then drops them and draws again)."""
    task = get_task('path_star', degree=3, arm_length=4, n_nodes=30)      # repeats by chance: ~1e-10
    train = generate(task, 40, seed=0, workers=1, chunk_size=8)
    assert len(set(train)) == 40
    assert not set(train) & set(generate(task, 40, seed=0, split='test', workers=1, chunk_size=8))


def test_sudoku_layouts():
    (p, a), = generate(get_task('sudoku', size=4, givens=6), 1, seed=0, workers=1)
    inplace, prompt = get_task('sudoku', size=4, givens=6), get_task('sudoku', size=4, givens=6, layout='prompt')
    ids, answer_mask = inplace.encode(p, a)
    assert ids.shape == (17,) and answer_mask.sum() == 10     # only the 10 blanks are to be filled
    masked, _ = inplace.encode(p)
    assert ''.join(inplace.vocab[i] for i in masked[1:] if i != 1) == p.replace('.', '')
    ids, answer_mask = prompt.encode(p, a)
    assert ids.shape == (33,) and answer_mask.sum() == 16 and prompt.decode_answer(ids) == a


@pytest.mark.parametrize('size,givens', [(4, 5), (6, 12), (9, 28)])
def test_sudoku_puzzles_have_exactly_one_solution(size, givens):
    task = get_task('sudoku', size=size, givens=givens)
    for problem, answer in generate(task, 20, seed=0, workers=1):
        assert sum(c != '.' for c in problem) == givens
        sols = sudoku_solve([0 if c == '.' else int(c) for c in problem], size, limit=2)
        assert len(sols) == 1 and ''.join(map(str, sols[0])) == answer


@pytest.mark.exercise(6)
def test_sudoku_verifier_accepts_any_valid_answer():
    task = get_task('sudoku', size=4, givens=0)
    empty = '.' * 16
    for a in {ans for _, ans in generate(get_task('sudoku_gen', size=4), 5, seed=0, workers=1)}:
        assert task.verify(empty, a)                       # any valid grid solves an empty puzzle
    problem, answer = generate(get_task('sudoku', size=4, givens=6), 1, seed=0, workers=1)[0]
    given = next(i for i, c in enumerate(problem) if c != '.')
    other = [a for _, a in generate(get_task('sudoku_gen', size=4), 50, seed=2, workers=1) if a[given] != problem[given]]
    assert other and not task.verify(problem, other[0])  # valid grid but a given changed
    assert not task.verify(empty, '1234234134124123')     # rows and columns right, a box twice 2
    assert not task.verify(empty, '1234341212343412')     # rows and boxes right, a column twice 1


def test_sudoku_logic_finds_hidden_singles():
    """A digit that fits only one cell of a unit goes there even when that cell has other
    candidates (a hidden single): without this rule the generator certifies fewer puzzles."""
    n = 4
    units, cell_units = sudoku_units(n)
    cand = np.full((1, n * n), (1 << n) - 1)             # every digit possible everywhere
    cand[0, 1:4] &= ~1                                    # ... except 1 in cells 1-3 of row 0
    out = sudoku_propagate(cand, units, cell_units, n)
    assert out[0, 0] == 1                                 # so cell 0 holds the 1
    assert (out[0, [4, 5, 8, 12]] & 1 == 0).all()        # and leaves its column and box


def test_zebra_puzzles_have_exactly_one_solution():
    task = get_task('zebra', houses=4, attributes=3)
    for problem, answer in generate(task, 8, seed=0, workers=1):
        clues = task.parse_clues(problem)
        assert task.count_solutions(clues, limit=10) == 1
        assert all(task.count_solutions([c for c in clues if c != drop], limit=2) == 2 for drop in clues)


def test_countdown_verifier_rules():
    task = get_task('countdown', n_numbers=4)
    p = '80,58,11,83,81'
    assert task.verify(p, '80-58=22,22/11=2,83-2=81')
    assert not task.verify(p, '80-58=22,22/11=2,83-2=80')   # wrong arithmetic
    assert not task.verify(p, '80-58=22,22-11=11,83-11=72')  # wrong final value
    assert not task.verify(p, '80+80=160,160-79=81')          # 80 used twice, 79 not given
    assert task.verify('8,2,9,2,6', '8/2=4,4+2=6')
    assert not task.verify('7,2,9,2,5', '7/2=3,3+2=5')        # inexact division (7 // 2 = 3)
    assert not task.verify(p, '')


def test_countdown_reads_the_public_jsonl_forms():
    task = get_task('countdown', n_numbers=3)
    assert task.parse_line('{"input": "15,44,79,50", "output": "44-15=29,79-29=50"}') == \
        ('15,44,79,50', '44-15=29,79-29=50')
    assert task.parse_line('{"target": 50, "nums": [15, 44, 79]}') == ('15,44,79,50', None)
    assert task.parse_line('{"numbers": [15, 44, 79], "target": 50}') == ('15,44,79,50', None)
    assert task.parse_line('{"input": "15,44,79", "output": "50"}') == ('15,44,79,50', None)   # d1's test file
    assert task.parse_line('{"input": "15,44,79", "output": 50}') == ('15,44,79,50', None)
    assert task.parse_line('{"input": "15,44,79,50", "output": "50"}') == ('15,44,79,50', '50')  # an answer, as written
    # an answer written as one expression (TinyZero, d1) is read as the steps it stands for, and
    # verify judges those: a number used twice, an inexact division, a value below 0 fail
    for output, steps, right in [('(79 - 44) + 15', '79-44=35,35+15=50', True),
                                 ('79-(44-15) = 50', '44-15=29,79-29=50', True),
                                 ('(15 - 44) + 79', '15-44=-29,-29+79=50', False),     # below 0
                                 ('79 - 15 - 15 + 1', '79-15=64,64-15=49,49+1=50', False),   # 15 twice, no 1
                                 ('(79 + 15) / 44 + 48', '79+15=94,94/44=2,2+48=50', False)]:   # inexact
        problem, answer = task.parse_line(json.dumps({'nums': [15, 44, 79], 'target': 50, 'output': output}))
        assert (problem, answer, task.verify(problem, answer)) == ('15,44,79,50', steps, right), output
    # Stream of Search's files: the steps as a list under "solution", judged by the same verify
    sos = {'nums': [15, 44, 79], 'target': 50, 'search_path': 'Current State: 50:[15, 44, 79] ...'}
    for solution, right in [(['44-15=29', '79-29=50'], True), (['44+15=59', '79-59=20'], False)]:
        problem, answer = task.parse_line(json.dumps(dict(sos, solution=solution)))
        assert (problem, answer, task.verify(problem, answer)) == ('15,44,79,50', ','.join(solution), right)
    assert task.parse_line(json.dumps(dict(sos, solution=['44-15=29'], output='79-15=64')))[1] == '79-15=64'
    for kept in ('79-(44-15) = 49', '(79 - 44) ** 2', "__import__('os')", '44+6', '(30 / 0)'):   # as written
        assert task.parse_line(json.dumps({'input': '15,44,79,50', 'output': kept}))[1] == kept
    for bad in ('{"target": 50, "nums": [15, 44]}', '{"input": 15}', '[15, 44, 79, 50]',
                '{"input": "15,44", "output": "50"}', '{"input": "15,44,79", "output": "44-15=29"}'):
        with pytest.raises(ValueError):
            task.parse_line(bad)


def test_countdown_reads_a_json_array_file_too(tmp_path):
    task = get_task('countdown', n_numbers=3)
    path = tmp_path / 'cd.json'
    path.write_text('[{"target": 50, "nums": [15, 44, 79]},\n {"target": 6, "nums": [1, 2]}]\n')
    assert read_examples(task, str(path), skip_bad=True) == \
        ([('15,44,79,50', None)], [f'{path}:item 2: expected 3 numbers and a target, comma separated; got 2 numbers and a '
                                      'target (a model reads only the count it was trained on)'])
    path.write_text('[{"target": 50, "nums": [15, 44, 79]},')
    with pytest.raises(TaskFormatError, match='starts with \\[ but is not a JSON array'):
        read_examples(task, str(path))


def test_countdown_heldout_targets_are_disjoint():
    task = get_task('countdown', n_numbers=3, heldout_targets=True)
    splits = make_splits(task, 200, 50, 50, seed=0)
    target = lambda ex: int(ex[0].split(',')[-1])
    train_t = {target(e) for e in splits['train']}
    test_t = {target(e) for e in splits['test']} | {target(e) for e in splits['val']}
    assert train_t and test_t and not train_t & test_t


@pytest.mark.parametrize('name,options', CONFIGS[::2])
def test_splits_share_no_example(name, options, tmp_path):
    task = get_task(name, **options)
    splits = load_splits(task, 30, 10, 10, seed=0, data_dir=str(tmp_path))
    keys = {k: {p or a for p, a in v} for k, v in splits.items()}
    assert [len(keys[k]) for k in ('train', 'val', 'test')] == [30, 10, 10]
    assert not keys['train'] & keys['test'] and not keys['train'] & keys['val'] and not keys['val'] & keys['test']
    assert load_splits(task, 30, 10, 10, seed=0, data_dir=str(tmp_path)) == splits   # the cache
    assert load_splits(task, 30, 10, 10, seed=1, data_dir=str(tmp_path)) != splits   # keyed by the seed too


@pytest.mark.parametrize('name,options', CONFIGS)
def test_file_round_trip(name, options, tmp_path):
    task = get_task(name, **options)
    examples = generate(task, 5, seed=0, workers=1)
    path = tmp_path / 'x.txt'
    write_examples(task, str(path), examples)
    assert read_examples(task, str(path)) == examples


def test_sudoku_standard_formats(tmp_path):
    task = get_task('sudoku', size=9)
    (problem, answer), = generate(task, 1, seed=0, workers=1)
    path = tmp_path / 'p.txt'
    path.write_text(f'{problem.replace(".", "0")}   # from somewhere\n{problem}\n\n{problem},{answer}\n')
    assert read_examples(task, str(path)) == [(problem, None), (problem, None), (problem, answer)]
    assert read_examples(task, str(path), limit=2) == [(problem, None), (problem, None)]
    path.write_text(f'{problem}\r\n{problem}\r\n\r\n{problem},{answer}\r\n', encoding='utf-8-sig')   # saved on Windows
    assert read_examples(task, str(path)) == [(problem, None), (problem, None), (problem, answer)]
    path.write_text(f'{problem}\t{answer}\n{problem} {answer[:80]}\n{problem.replace(".", "0")}  {answer}  # rated 3\n')
    assert read_examples(task, str(path)) == [(problem, answer), (problem, None), (problem, answer)]   # 80: a comment
    path.write_text(f'0000183b305c {problem.replace(".", "0")}  1.2\n7 {problem} {answer}\n{problem[:80]} {answer}\n')
    with pytest.raises(TaskFormatError, match=':3: expected 81 cells for a 9x9 sudoku, got 80'):
        read_examples(task, str(path))             # a line with no 81-cell field: its first field reported
    assert read_examples(task, str(path), limit=2) == [(problem, None), (problem, answer)]   # Sudoku Exchange's bank
    with pytest.raises(TaskFormatError, match='expected 36 cells for a 6x6 sudoku, got 81'):
        read_examples(get_task('sudoku', size=6), str(path))    # not 'got 12', the hash's length
    csv_path = tmp_path / 'p.csv'
    for header, row in [('id,puzzle,solution', f'0,{problem},{answer}'),
                        ('quizzes,solutions', f'{problem.replace(".", "0")},{answer}'),   # Kaggle 1M
                        ('source,question,answer,rating', f'x,{problem},{answer},12'),    # sudoku-extreme
                        ('Puzzle', problem),                                            # no solution column
                        ('"id", "Puzzle", "Solution"', f'0,{problem},{answer}')]:       # quoted, spaced
        csv_path.write_text(f'{header}\n{row}\n')
        assert read_examples(task, str(csv_path)) == [(problem, answer if ',' in header else None)], header
    for header, row in [('puzzle\tsolution', f'{problem}\t{answer}'), ('id\tquizzes', f'7\t{problem}'),   # TSV
                        ('id;puzzle;solution', f'7;{problem};{answer}')]:      # as Excel writes CSV in Europe
        csv_path.write_text(f'{header}\n{row}\n')
        assert read_examples(task, str(csv_path)) == [(problem, answer if 'solution' in header else None)], header


def test_standard_input_reads_as_a_file_does(monkeypatch):
    """path '-' is the standard input (one puzzle piped in, or a compressed file): read as the
    same bytes in a file are, and a bad line is named 'stdin:LINE'."""
    task = get_task('sudoku', size=9)
    (problem, answer), = generate(task, 1, seed=0, workers=1)
    stdin = lambda data: monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(io.BytesIO(data)))
    stdin(gzip.compress(f'{problem}\n{problem},{answer}\n'.encode()))
    assert read_examples(task, '-') == [(problem, None), (problem, answer)]
    stdin(f'{problem}\n{problem[:80]}\n'.encode())
    with pytest.raises(TaskFormatError, match=r'^stdin:2: expected 81 cells for a 9x9 sudoku, got 80$'):
        read_examples(task, '-')


def test_sudoku_grids_written_over_several_lines(tmp_path):
    """Project Euler 96's sudoku.txt ('Grid 01', then 9 rows of 9 digits, '0' blank), grids with
    spaces between cells and blank lines between grids, Norvig's easy50.txt (a ruler of '=' between
    grids) and grids printed with borders between boxes read as the one-line format does; a row of
    another length or a grid cut short names its line, and --skip_bad goes on after it."""
    task = get_task('sudoku', size=9)
    puzzles = [p for p, _ in generate(task, 3, seed=0, workers=1)]
    rows = lambda p, sep='': [sep.join(p[r * 9:r * 9 + 9]) for r in range(9)]
    euler = [line for i, p in enumerate(puzzles) for line in [f'Grid {i + 1:02d}', *rows(p.replace('.', '0'))]]
    path = tmp_path / 'sudoku.txt'
    path.write_text('\n'.join(euler) + '\n')
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]
    assert read_examples(task, str(path), limit=1) == [(puzzles[0], None)]
    path.write_text('\n\n'.join('\n'.join(rows(p, ' ')) for p in puzzles))
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]
    path.write_text('\n========\n'.join('\n'.join(rows(p.replace('.', '0'))) for p in puzzles) + '\n')
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]   # Norvig's easy50.txt
    printed = lambda p: [' |'.join(' '.join(r[c:c + 3]) for c in (0, 3, 6)) for r in rows(p)]
    boxed = lambda p: [*printed(p)[:3], '------+-------+------', *printed(p)[3:6], '------+-------+------',
                       *printed(p)[6:]]                                   # as Norvig's display() prints one
    path.write_text('4 . . |. . . |8 . 5 \n. 3 . |. . . |. . . \n. . . |7 . . |. . . \n------+------+------\n'
                    '. 2 . |. . . |. 6 . \n. . . |. 8 . |4 . . \n. . . |. 1 . |. . . \n------+------+------\n'
                    '. . . |6 . 3 |. 7 . \n5 . . |2 . . |. . . \n1 . 4 |. . . |. . . \n')   # Norvig's essay, as printed
    assert read_examples(task, str(path)) == [
        ('4.....8.5.3..........7......2.....6.....8.4......1.......6.3.7.5..2.....1.4......', None)]
    path.write_text('\n\n'.join('\n'.join(boxed(p)) for p in puzzles) + '\n')
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]
    framed = lambda p: [line for b in (0, 3, 6) for line in ['+-------+-------+-------+', *[
        '| ' + ' | '.join(' '.join(r[c:c + 3]) for c in (0, 3, 6)) + ' |' for r in rows(p)[b:b + 3]]]] + [
        '+-------+-------+-------+']                                      # a frame around every box
    path.write_text('\n'.join(line for p in puzzles for line in framed(p)) + '\n')
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]
    simple = lambda p: ['*-----------*', *[line for b in (0, 3, 6) for line in [
        *['|' + '|'.join(r[c:c + 3] for c in (0, 3, 6)) + '|' for r in rows(p)[b:b + 3]], '|---+---+---|']][:-1],
        '*-----------*']                                                  # Simple Sudoku's .ss
    path.write_text('\n'.join(line for p in puzzles for line in simple(p)) + '\n')
    assert read_examples(task, str(path)) == [(p, None) for p in puzzles]
    lines = '\n'.join(boxed(puzzles[0])).splitlines()
    path.write_text('\n'.join(lines[:3] + lines[4:]) + '\n')           # a border left out changes nothing
    assert read_examples(task, str(path)) == [(puzzles[0], None)]
    framed_rows = [line for p in puzzles for line in framed(p)]
    del framed_rows[5]                          # grid 1's fourth row (line 6): its box's border comes early
    path.write_text('\n'.join(framed_rows) + '\n')
    with pytest.raises(TaskFormatError, match=r'sudoku.txt:2: expected 81 cells for a 9x9 sudoku, got 45'):
        read_examples(task, str(path))
    examples, errors = read_examples(task, str(path), skip_bad=True)    # grid 2's rows not taken into grid 1
    assert examples == [(p, None) for p in puzzles[1:]] and errors[1].endswith(':9: expected 81 cells '
                                                                               'for a 9x9 sudoku, got 27')
    whole, euler[14] = euler[14], euler[14][:4]     # grid 2's fourth row (line 15) loses 5 cells
    path.write_text('\n'.join(euler) + '\n')
    with pytest.raises(TaskFormatError, match=r'sudoku.txt:15: expected 81 cells for a 9x9 sudoku, got 4'):
        read_examples(task, str(path))
    examples, errors = read_examples(task, str(path), skip_bad=True)
    assert examples == [(puzzles[0], None), (puzzles[2], None)]            # grid 2 is not read at all
    assert errors[0].endswith(':15: expected 81 cells for a 9x9 sudoku, got 4') and ':16: ' in errors[1]
    euler[14] = whole
    path.write_text('\n'.join(euler[:11] + ['see the next grid'] + euler[11:]) + '\n')   # text, not a title
    with pytest.raises(TaskFormatError, match=r'sudoku.txt:12: expected 81 cells'):
        read_examples(task, str(path))
    path.write_text(f'x{puzzles[0][1:]}\n')        # a one-line file starting with a letter is no title
    with pytest.raises(TaskFormatError, match=r"sudoku.txt:1: characters outside the alphabet: 'x' \(a 9x9 "
                                              r"puzzle holds the digits 1 to 9 and '\.' or '0' for a blank\)"):
        read_examples(task, str(path))
    path.write_text('\n'.join(euler[:25]) + '\n')     # grid 3 cut short after 4 rows: it begins on line 22
    with pytest.raises(TaskFormatError, match=r'sudoku.txt:22: expected 81 cells for a 9x9 sudoku, got 36'):
        read_examples(task, str(path))


def test_compressed_files_read_as_the_plain_file_and_binary_ones_are_refused(tmp_path):
    """Public puzzle sets ship as .gz, .bz2, .xz or as a zip of one CSV; the first bytes say which.
    A file cut short (an interrupted download) or damaged is an error that names it."""
    task = get_task('sudoku', size=9)
    (problem, answer), = generate(task, 1, seed=0, workers=1)
    text = f'quizzes,solutions\r\n{problem.replace(".", "0")},{answer}\r\n{problem}\r\n'
    for name, compress in (('p.gz', gzip.compress), ('p.bz2', bz2.compress), ('p.xz', lzma.compress)):
        (tmp_path / name).write_bytes(compress(text.encode()))
        (tmp_path / f'cut{name}').write_bytes(compress(text.encode())[:30])
        (tmp_path / f'bad{name}').write_bytes(compress(text.encode())[:12] + b'garbage' * 9)
    with zipfile.ZipFile(tmp_path / 'p.zip', 'w') as z:
        z.writestr('sudoku.csv', text)
    for name in ('p.gz', 'p.bz2', 'p.xz', 'p.zip'):     # the name says nothing: a .txt holding gzip reads too
        assert read_examples(task, str(tmp_path / name)) == [(problem, answer), (problem, None)], name
    with zipfile.ZipFile(tmp_path / 'two.zip', 'w') as z:
        z.writestr('a.csv', text); z.writestr('b.csv', text)
    (tmp_path / 'binary.txt').write_bytes(b'\x00\xff\xfe' + problem.encode())
    (tmp_path / 'cut.zip').write_bytes((tmp_path / 'p.zip').read_bytes()[:40])
    damaged = [(f'{how}p.{ext}', f'a damaged {kind} file') for how in ('cut', 'bad')
               for ext, kind in (('gz', 'gzip'), ('bz2', 'bzip2'), ('xz', 'xz'))]
    for name, message in (('two.zip', 'must hold exactly one file, this one holds 2'),
                          ('binary.txt', 'not a UTF-8 text file'), ('cut.zip', 'a damaged zip file'), *damaged):
        with pytest.raises(TaskFormatError, match=message):
            read_examples(task, str(tmp_path / name))


BAD_LINES = [('sudoku', dict(size=4), '1234'),                   # wrong length
             ('sudoku', dict(size=4), '1.3.x...........'),       # character outside the alphabet
             ('sudoku', dict(size=4), '11..............'),       # givens conflict
             ('countdown', {}, '{"input": "1,2,3'),                # broken JSON
             ('path_star', {}, '1,2|3/1,2=1,2'),                   # edge list does not parse
             ('zebra', {}, 'Q0.1=0123|0123|0123|0123')]           # clue does not parse


@pytest.mark.parametrize('name,options,bad', BAD_LINES)
def test_malformed_lines_name_file_and_line(name, options, bad, tmp_path):
    task = get_task(name, **options)
    good = task.format_line(*generate(task, 1, seed=0, workers=1)[0])
    path = tmp_path / 'in.txt'
    path.write_text(f'{good}\n{bad}\n{good}\n')
    with pytest.raises(TaskFormatError, match=r'in.txt:2: '):
        read_examples(task, str(path))
    examples, errors = read_examples(task, str(path), skip_bad=True)
    assert len(examples) == 2 and len(errors) == 1 and ':2:' in errors[0]


def test_processes_started_while_ctrl_c_is_ignored_ignore_it_and_this_one_takes_it_back():
    """What generate() and reproduce.py's --processes rely on to take Ctrl-C in one process only
    (the whole story, with real Ctrl-C, in the slow tests)."""
    from data import on_ctrl_c
    ask = [sys.executable, '-c', 'import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)']
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal (a shell's
    try:                                                                   # background job ignores it)
        with on_ctrl_c(signal.SIG_IGN):
            assert subprocess.run(ask, capture_output=True, text=True).stdout.strip() == 'True'
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert subprocess.run(ask, capture_output=True, text=True).stdout.strip() == 'False'   # started outside it
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow      # real processes and a real Ctrl-C: about 5 s
def test_ctrl_c_while_generating_on_all_cores_is_one_message(tmp_path):
    """Ctrl-C reaches data.py and its generating processes (a terminal signals them all), some still
    starting: one line says nothing was written. Was: a traceback from every process."""
    run = subprocess.Popen([sys.executable, 'data.py', '--task=sudoku', '--size=9', '--n=200000',
                            f'--out={tmp_path}/big.txt'], stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ''
    while 'generating' not in seen and run.poll() is None:     # the bar: the processes are starting
        seen += run.stderr.read(1)
    os.killpg(run.pid, signal.SIGINT)
    err = seen + run.communicate(timeout=60)[1]
    assert run.returncode == 1 and 'Traceback' not in err, err[-3000:]
    assert err.strip().endswith('stopped by Ctrl-C while generating 200000 sudoku train examples: nothing was written')
    assert not list(tmp_path.iterdir())


def test_cli_check_last_line_is_json(tmp_path):
    task = get_task('sudoku', size=4, givens=6)
    examples = generate(task, 4, seed=0, workers=1)
    examples[1] = (examples[1][0], examples[2][1])       # one wrong answer
    examples[3] = (examples[3][0], None)                 # one puzzle with no answer at all
    path = tmp_path / 'a.txt'
    write_examples(task, str(path), examples)
    out = subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=4', f'--check={path}'],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {'task': 'sudoku', 'n': 4, 'valid': 2, 'skipped': 0,
                                                         'failures': {'invalid': 1, 'no answer': 1}}
    bad = subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=4', '--check=/nonexistent'],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and 'Traceback' not in bad.stderr and 'nonexistent' in bad.stderr


@pytest.mark.parametrize('name', ['sudoku', 'sudoku_gen'])
def test_any_answer_a_model_can_write_is_read_and_judged(name, tmp_path):
    """Decoding bars only MASK and SEP, so a Sudoku model can write any other symbol of its
    vocabulary: an 8 on 6x6, a '.', or PAD, which ends the answer early. sample.py --output writes
    it as it is; --check must count it invalid, not refuse the file (it did, for an 8 that a 6x6
    model wrote: 'solution must be 36 digits 1..6'). An answer that starts with PAD is empty, and
    its row must survive too: --compare pairs two files row by row."""
    task = get_task(name, size=6, givens=12) if name == 'sudoku' else get_task(name, size=6)
    (p, a), = generate(task, 1, seed=0, workers=1)
    ids, _ = task.encode(p, a)
    written = [(p, task.decode_answer(ids))]
    for cell, token in [(5, task.stoi['8']), (5, task.stoi['.'] if '.' in task.stoi else task.stoi['9']),
                        (5, PAD), (0, PAD)]:
        wrong = ids.copy()
        wrong[task.prompt_len + 1 + cell] = token
        written.append((p, task.decode_answer(wrong)))
    assert '8' in written[1][1] and len(written[3][1]) == 5 and written[4][1] == ''
    path = tmp_path / 'answers.txt'
    write_examples(task, str(path), written)
    read = [a for _, a in read_examples(task, str(path))]
    assert read[:4] == [a for _, a in written[:4]] and read[4:] == [None]     # the empty one: no answer
    out = subprocess.run([sys.executable, 'data.py', f'--task={name}', '--size=6', f'--check={path}'],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result['valid'] == 1
    assert result['failures'] == {'invalid': 3, 'no answer': 1}


def test_cli_compare_counts_puzzles_won_and_lost(tmp_path):
    """--compare: the second file's answers against the first's, puzzle by puzzle, with the
    paired interval; files that do not hold the same puzzles in the same order are refused."""
    task = get_task('sudoku', size=4, givens=6)
    examples = generate(task, 5, seed=0, workers=1)
    wrong = lambda i: (examples[i][0], examples[(i + 1) % 5][1])
    base = [examples[0], wrong(1), wrong(2), examples[3], (examples[4][0], None)]   # 2 valid
    other = [examples[0], examples[1], examples[2], wrong(3), examples[4]]        # 4 valid: lost 1, won 3
    paths = {}
    for name, run in [('base', base), ('other', other), ('shuffled', other[::-1]), ('short', other[:4])]:
        paths[name] = tmp_path / f'{name}.txt'
        write_examples(task, str(paths[name]), run)
    cli = lambda a, b: subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=4', f'--check={a}',
                                       f'--compare={b}'], capture_output=True, text=True)
    r = cli(paths['base'], paths['other'])
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result['valid'] == 2
    d, half, lost, won = paired_difference([True, False, False, True, False], [True, True, True, False, True])
    assert (lost, won, d) == (1, 3, 0.4) and result['compare'] == dict(valid=4, difference=d, half_width=half, lost=1, won=3, skipped=0)
    assert '+40.0 +- ' in r.stdout
    for bad, why in [('shuffled', 'puzzle 1 differs'), ('short', 'holds 4 puzzles')]:
        r = cli(paths['base'], paths[bad])
        assert r.returncode != 0 and why in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.exercise(8)
def test_paired_difference_by_hand():
    # 4 puzzles: the second lost, the third and fourth won: +1/4; the per-puzzle differences
    # (0, -1, +1, +1) have mean 1/4 and mean square 3/4, so variance 3/4 - 1/16 = 11/16
    d, half, lost, won = paired_difference([True, True, False, False], [True, False, True, True])
    assert (d, lost, won) == (0.25, 1, 2)
    assert half == pytest.approx(1.96 * (11 / 16 / 4) ** 0.5)
    assert paired_difference([True, False], [True, False]) == (0.0, 0.0, 0, 0)
    d2, half2, lost2, won2 = paired_difference([True, False, True, True], [True, True, False, False])
    assert (d2, lost2, won2) == (-0.25, 2, 1) and half2 == pytest.approx(half)   # swapped: sign flips, width stays


def test_path_star_failures_name_the_clever_hans_guess():
    # source 0; arms 0-1-2-3 and 0-4-5-6; the goal 3 is at the end of the first arm
    task = get_task('path_star', degree=2, arm_length=3, n_nodes=7)
    problem = '4,5|0,1|2,3|5,6|1,2|0,4/0,3'
    assert task.failure(problem, '0,1,2,3') is None
    assert task.failure(problem, '0,4,5,3') == 'wrong arm, 2 of 3 steps along edges'     # guessed, then followed
    assert task.failure(problem, '0,4,5,6') == 'wrong arm, 3 of 3 steps along edges'
    assert task.failure(problem, '0,1,5,3') == 'right arm, 1 of 3 steps along edges'
    assert task.failure(problem, '1,2,3') == 'does not start at the source'
    assert task.failure(problem, '0,2,3') == task.failure(problem, '0') == 'no step along an edge'
    assert task.failure(problem, '0,x') == 'not a list of nodes'
    assert get_task('sudoku', size=4).failure('.' * 16, '1' * 16) == 'invalid'


def test_path_star_mixed_arm_lengths_pad_to_the_longest():
    """min_arm_length < arm_length draws each graph's arm length from the range: both sizes come
    out, valid, padded to the longest; the longest size's files still read, a size outside the
    range does not; and an unmixed task's graphs are what they were (no extra draw)."""
    mixed = get_task('path_star', degree=2, arm_length=4, n_nodes=20, min_arm_length=3)
    plain = get_task('path_star', degree=2, arm_length=4, n_nodes=20)
    examples = mixed.generate(200, np.random.default_rng(0))
    by_length = {n: [e for e in examples if len(e[1].split(',')) == n] for n in (4, 5)}
    assert {len(e[1].split(',')) for e in examples} == {4, 5} and min(map(len, by_length.values())) > 60
    assert all(mixed.verify(p, a) for p, a in examples)
    assert (mixed.seq_len, mixed.prompt_len) == (plain.seq_len, plain.prompt_len)
    ids, answer_mask = mixed.encode(*by_length[4][0])          # arm 3: 8 fewer prompt tokens, 2 fewer answer
    assert (ids[:mixed.prompt_len] == 0).sum() == 8 and (ids[answer_mask] == 0).sum() == 2
    assert mixed.decode_answer(ids) == by_length[4][0][1]
    assert mixed.parse_line(plain.format_line(*by_length[5][0]))
    with pytest.raises(ValueError, match='expected 8 edges'):
        plain.parse_line(plain.format_line(*by_length[4][0]))
    with pytest.raises(ValueError, match='expected 6 or 8 edges'):
        mixed.parse_line('0,1|1,2|0,3|3,4/0,4=0,3,4')
    assert plain.config() == dict(name='path_star', degree=2, arm_length=4, n_nodes=20)    # old checkpoints
    assert get_task('path_star', degree=2, arm_length=4, n_nodes=20, min_arm_length=4).config() == plain.config()
    assert plain.generate(5, np.random.default_rng(1))[0] == \
        ('18,14|2,0|5,18|6,4|5,6|4,17|17,10|14,2/5,0', '5,18,14,2,0')   # as before the mix
    with pytest.raises(ValueError, match='min_arm_length'):
        get_task('path_star', degree=2, arm_length=4, min_arm_length=5)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match='valid'):
        get_task('sudoku', sizes=9)
    with pytest.raises(ValueError, match='choose from'):
        get_task('chess')


def test_a_file_with_nothing_to_read_is_an_error_not_a_zero_score(tmp_path):
    """An empty file, or one whose lines are all malformed, is a mistake to report (before: '0 of 0
    solved (0.0%)', and `sample.py --show` failed with an IndexError)."""
    task = get_task('sudoku', size=6)
    path = tmp_path / 'none.txt'
    for text in ('', '\n# only a comment\n\n'):
        path.write_text(text)
        for skip_bad in (False, True):
            with pytest.raises(TaskFormatError, match='none.txt: it has no examples'):
                read_examples(task, str(path), skip_bad=skip_bad)
    path.write_text('garbage\n12\n')
    with pytest.raises(TaskFormatError, match=r'none.txt: no line could be read \(2 malformed; the first: .*none.txt:1: '):
        read_examples(task, str(path), skip_bad=True)
    r = subprocess.run([sys.executable, 'data.py', '--task=sudoku', '--size=6', f'--check={path}', '--skip_bad'],
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'no line could be read' in r.stderr and 'Traceback' not in r.stderr
