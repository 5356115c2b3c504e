"""
exercises.py: course assignments made from this repo, and their grader.

Nine regions of the code (seven ideas of the paper, one of ours, and one way to judge what they
change) sit between `# EXERCISE N: ...` and `# END EXERCISE N` lines. An instructor writes a student
copy in which each region is replaced by `raise NotImplementedError("Exercise N: ...")` and a hint;
the tests that belong to an exercise carry `@pytest.mark.exercise(N)`. Tests that only *use* an
unsolved exercise are skipped with a reason (tests/conftest.py), so a student sees only the failures
that are theirs.

    python exercises.py --make=../student      # write a student copy
    python exercises.py --grade                # in any copy: a table, then one JSON line
"""
import json, os, re, shutil, subprocess, sys, tempfile
from dataclasses import dataclass
from configurator import parse_settings

# number: (title, file and function, hint, what you should see when it works, exercises it needs)
EXERCISES = {
    1: ('semi-causal attention', 'model.py: attention_mask',
        'clean queries see clean keys; a masked query i sees clean keys, itself, and the masked j '
        'with rank[j] < rank[i]. Build `mask` from clean_k, masked_q, self_ and rank.',
        'tests/test_model.py passes for semi_causal; `python train_mdlm.py` (SCDM) reaches 93 to 95% '
        'val solve accuracy on 6x6 Sudoku in 2 to 4.5 minutes on 2 CPU cores with AVX-512 '
        '(15 with AVX2 only)', ()),
    2: ('the MDLM loss', 'train_mdlm.py: mdlm_loss',
        'weight each masked token\'s cross-entropy by 1/t and normalise by the number of answer '
        'tokens (not the number masked): then a know-nothing model scores log V per answer token.',
        'test_mdlm_loss_hand_computed gives (6 + 20) / 6; MDM training loss falls below 0.1 within '
        '800 steps on 6x6 Sudoku', ()),
    3: ('the trimmed latent pass', 'sample.py: trimmed_pass',
        'keep = clean | D | L; a stable argsort of 2 * (~keep) + masked puts each row\'s kept clean '
        'positions first (the cache keeps them), then its kept masked ones; cut to the longest row; '
        'gather keep to know which slots are padding.',
        '`python sample.py --n_latent=0` processes far fewer positions per puzzle than '
        '--n_latent=all, and the trimmed passes equal untrimmed ones (test)', (1, 7)),
    4: ('the AR+MTP loss', 'train_ar_mtp.py: mtp_loss',
        'the loss positions are the masked ones with rank < W (rank < 1 for --ntp_only); every '
        'example weighs the same: the mean of its own loss positions, then the mean over examples.',
        'test_mtp_loss_and_window passes for W = 1, 3, all and the NTP-only ablation', ()),
    5: ('the KV cache', 'model.py: KVCache.commit',
        'for every layer, keep only the first n of this step\'s keys/values (self.new) and append '
        'them to the cache (self.k, self.v; None while empty).',
        'cached AR decoding gives exactly the uncached tokens (test_cached_and_uncached_decoding_agree) '
        'with many fewer positions: after `python train_ar_mtp.py --max_iters=300 --eval_interval=300` '
        '(46 s on 2 cores of an AMD EPYC with AVX-512), `python reproduce.py --bench_cache --ckpt=out/ar/ckpt.pt '
        '--n=100` shows the cached row losing and winning no puzzle against the uncached one, with 72 '
        'positions per puzzle against 1,962', ()),
    6: ('a Sudoku verifier', 'tasks.py: Sudoku.verify',
        'an answer is right if it keeps every given and every row, column and box holds each digit '
        'once; sudoku_units(n) lists the units. Do not compare with the stored solution.',
        '`python data.py --task=sudoku --check=FILE` counts valid answers, any valid one accepted', ()),
    7: ('threshold decoding', 'sample.py: commit_rule',
        'pick_top(score(...), candidates, tokens_per_step) gives the best ones; with a threshold, '
        'also every candidate whose top probability is at least it.',
        'after `python train_mdlm.py --attn=full --max_iters=700 --out_dir=out/mdm`, `python '
        'sample.py --ckpt=out/mdm/ckpt.pt --n=300 --threshold=0.999` solves as many puzzles as '
        '--threshold=0 (98 to 99% on two CPUs we tried) in about 4x fewer forward passes per '
        'puzzle (5.6 to 5.7 against 24); --threshold=0.9 needs 2.6 but solves only 66 to 68%: a '
        'cell committed at 0.9 is wrong one time in ten', ()),
    8: ('a paired comparison', 'data.py: paired_difference',
        'won = puzzles `other` solves and `base` does not, lost = the reverse; the difference is '
        '(won - lost) / n, the mean of the per-puzzle differences (+1, -1 or 0); its 95% half-width '
        'is 1.96 sqrt(variance / n), the variance being their mean square, (won + lost) / n, minus '
        'the mean squared.',
        'test_paired_difference_by_hand passes; `python reproduce.py --bench_cache '
        '--ckpt=out/mdlm/ckpt.pt --n=500` prints, for every cached row, its difference from the '
        'uncached row with that interval and the puzzles lost and won, and r = 1 (the uncached '
        'decoder) loses and wins none; `python data.py --task=sudoku --size=6 --check=a.txt '
        '--compare=b.txt` does the same for two answer files', ()),
    9: ("the latent chain's order", 'sample.py: chain_by_confidence',
        'sort the latents by their random rank (rank.argsort), then stably by -last_sure, so that '
        'ties keep the random order; a latent\'s place in that order, divided by T, is its new rank '
        '(distinct, below the 2.0 of D and the candidates). Leave every other position\'s rank as it is, '
        'and draw nothing from gen.',
        'test_confidence_latent_ranks_order_the_chain_by_the_last_pass passes; `python sample.py '
        '--ckpt=out/mdlm/ckpt.pt --n=500 --order=random --latent_ranks=confidence` solves more of the '
        'quick start\'s test puzzles than the paper\'s random chain (32.6% against 28.6% on an Intel '
        'Xeon with AMX)', (1, 3, 7)),
}
SOURCES = ('model.py', 'train_mdlm.py', 'train_ar_mtp.py', 'sample.py', 'tasks.py', 'data.py', 'reproduce.py')
REGION = re.compile(r'^([ \t]*)# EXERCISE (\d+): [^\n]*\n.*?^[ \t]*# END EXERCISE \2\n', re.M | re.S)


def student_version(text):
    """Every exercise region replaced by a NotImplementedError that says what to do."""
    def stub(m):
        indent, n = m.group(1), int(m.group(2))
        title, where, hint, _, _ = EXERCISES[n]
        return (f'{indent}# EXERCISE {n}: {title}. Hint: {hint}\n'
                f'{indent}raise NotImplementedError("Exercise {n}: {title} ({where}); see EXERCISES.md")\n'
                f'{indent}# END EXERCISE {n}\n')
    return REGION.sub(stub, text)


def regions(text):
    """{exercise number: the region's full text} of one file."""
    return {int(m.group(2)): m.group(0) for m in REGION.finditer(text)}


def make(target):
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(target):
        raise SystemExit(f'error: {target} exists; choose a new folder')
    shutil.copytree(here, target, ignore=shutil.ignore_patterns('.git', 'out', 'data', '__pycache__', '.pytest_cache',
                                                                'ckpt', '*.pt'))
    found = set()
    for name in SOURCES:
        path = os.path.join(target, name)
        text = open(path).read()
        found |= set(regions(text))
        open(path, 'w').write(student_version(text))
    missing = set(EXERCISES) - found
    if missing:
        raise SystemExit(f'error: no region found for exercises {sorted(missing)}')
    print(f'wrote a student copy with {len(found)} exercises to {target}')


def grade(repo='.'):
    """Run the exercise tests; print a table and, last, one JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, 'report.json')
        subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'exercise', '-p', 'no:cacheprovider', 'tests'],
                       cwd=repo, env=dict(os.environ, EXERCISE_REPORT=report), capture_output=True, text=True)
        if not os.path.exists(report):
            raise SystemExit('error: the tests did not run (try `python -m pytest -m exercise tests`)')
        outcomes = json.load(open(report))
    result = {}
    print(f'{"#":>2}  {"exercise":26s} {"tests":>5}  result')
    for n, (title, where, *_ ) in EXERCISES.items():
        mine = [o for o in outcomes if o['exercise'] == n]
        ok = bool(mine) and all(o['outcome'] == 'passed' for o in mine)
        result[str(n)] = dict(title=title, where=where, passed=ok, tests=len(mine),
                              failed=[o['test'] for o in mine if o['outcome'] != 'passed'])
        print(f'{n:>2}  {title:26s} {len(mine):>5}  {"pass" if ok else "FAIL"}  ({where})')
    summary = dict(passed=sum(r['passed'] for r in result.values()), total=len(EXERCISES), exercises=result)
    print(json.dumps(summary))
    return summary


@dataclass
class ExercisesConfig:
    make: str = ''       # write a student copy to this folder
    grade: bool = False  # grade the exercises of this copy


def main(argv):
    cfg = parse_settings(ExercisesConfig(), argv)
    if cfg.make:
        make(cfg.make)
    elif cfg.grade:
        grade()
    else:
        raise SystemExit('error: use --make=DIR or --grade')


if __name__ == '__main__':
    main(sys.argv[1:])
