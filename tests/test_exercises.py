"""exercises.py: a student copy has every region stubbed and nothing else changed; in it no
exercise passes and every other test passes or is skipped with a reason; restoring a region
(and the regions it needs) makes exactly those exercises pass; EXERCISES.md says what the table in exercises.py says."""
import json, os, subprocess, sys
import pytest
from exercises import EXERCISES, SOURCES, regions

FULL_REPO = 'raise NotImplementedError("Exercise' not in open('model.py').read()
pytestmark = pytest.mark.skipif(not FULL_REPO, reason='checks the making of student copies: runs in the full repo only')


def grade(repo):
    r = subprocess.run([sys.executable, 'exercises.py', '--grade'], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_student_copy_then_solving_exercises(tmp_path):
    copy = tmp_path / 'student'
    r = subprocess.run([sys.executable, 'exercises.py', f'--make={copy}'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    originals = {name: open(name).read() for name in SOURCES}
    for name, text in originals.items():                     # only the regions changed
        student = (copy / name).read_text()
        for n, region in regions(text).items():
            assert f'raise NotImplementedError("Exercise {n}:' in student
            text = text.replace(region, '')
            student = student.replace(regions(student)[n], '')
        assert student == text, name
    assert grade(copy)['passed'] == 0
    # every test that is not an exercise passes or is skipped with a reason
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-m', 'not exercise and not slow', '-p', 'no:cacheprovider', 'tests'],
                       cwd=copy, capture_output=True, text=True)
    assert r.returncode == 0 and 'waits for Exercise' in r.stdout, r.stdout[-3000:]
    # solve 2 and 3 (3 needs 1 and 7) by copying the original regions back
    for name, text in originals.items():
        student = (copy / name).read_text()
        for n in (1, 2, 3, 7):
            if n in regions(text):
                student = student.replace(regions(student)[n], regions(text)[n])
        (copy / name).write_text(student)
    result = grade(copy)
    assert {int(n) for n, e in result['exercises'].items() if e['passed']} == {1, 2, 3, 7}
    assert result['total'] == len(EXERCISES) and all(e['tests'] > 0 for e in result['exercises'].values())


@pytest.mark.slow      # the exercise tests themselves run in the default run; this grades them in a subprocess
def test_every_exercise_passes_in_the_full_repo():
    result = grade(os.getcwd())
    assert result['passed'] == result['total'] == len(EXERCISES), result


def test_exercises_md_says_what_the_table_says():
    """EXERCISES.md is the student's copy of EXERCISES: every title, place, hint, check and
    prerequisite appears there word for word, so the two cannot drift apart."""
    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'EXERCISES.md')).read()
    for n, (title, where, hint, works, needs) in EXERCISES.items():
        section = text.split(f'## {n}. {title}\n')[1].split('\n## ')[0]
        assert f'**Where:** `{where}`' in section and f'**Hint:** {hint}' in section, n
        assert f'**When it works:** {works}' in section, n
        assert ('**Needs:** exercise ' + ', '.join(map(str, needs))) in section if needs else '**Needs:**' not in section, n
