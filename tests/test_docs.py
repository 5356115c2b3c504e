"""The documentation is part of the interface. Every command the Markdown files tell a reader to
run must still parse: no unknown or misspelled setting, every value of its setting's type, task
options the task accepts (each script stops, patched, where its real work would begin). Every
relative link must reach a file that exists, and a heading where it names one (#anchor). A count
the README gives of the repo's own checks (the mutants) must be the count there is."""
import glob, importlib, os, re, runpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, '*.md'))
              + glob.glob(os.path.join(ROOT, 'results', '**', '*.md'), recursive=True))
SCRIPTS = ('train_mdlm.py', 'train_ar_mtp.py', 'sample.py', 'reproduce.py', 'data.py', 'exercises.py')


def documented_commands(path):
    """(script, argv) for each `python script.py ...` or `torchrun ... script.py ...` in a code
    block (an indented line) or in inline code (which may wrap across lines)."""
    text = re.sub(r'\\\n\s*', ' ', open(os.path.join(ROOT, path)).read())      # join continued lines
    found = [m.group(1) for m in re.finditer(r'^ {4,}((?:python|torchrun)\b.*?)(?:\s+#.*)?$', text, re.M)]
    found += [' '.join(m.group(1).split()) for m in re.finditer(r'`((?:python|torchrun)\b[^`]*)`', text)]
    commands = []
    for line in found:
        words = line.split()
        at = next((i for i, w in enumerate(words) if w in SCRIPTS), None)
        if at is None or '...' in line:         # python -m pytest; an elided command ("... --seed=3")
            continue
        # a placeholder value (--seed=S, --ckpt=CKPT) stands for something the reader fills in
        argv = [re.sub(r'=[A-Z]+$', '=1', w) for w in words[at + 1:]]
        commands.append((words[at], argv))
    return commands


COMMANDS = sorted({(doc, script, tuple(argv)) for doc in DOCS for script, argv in documented_commands(doc)})


class Parsed(Exception):
    """Raised where a script, its settings read and checked, would start its real work."""


def stop(*args, **kwargs):
    raise Parsed


def test_the_documents_hold_commands_for_every_script():
    assert {script for _, script, _ in COMMANDS} == set(SCRIPTS)
    assert len(COMMANDS) > 40


def run_until_work(script, argv, monkeypatch):
    """Run `script`'s main on argv, patched to raise Parsed where its real work would begin."""
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(script[:-3])
    patched = {'train_mdlm.py': ('train', 'bench'), 'train_ar_mtp.py': ('train',),
               'sample.py': ('load_checkpoint',), 'reproduce.py': ('pick_device', 'write_table', 'seed_spread'),
               'data.py': ('bench', 'read_examples', 'generate'), 'exercises.py': ('make', 'grade')}[script]
    for name in patched:                        # the first step of real work, after every check
        monkeypatch.setattr(module, name, stop)
    module.main(argv)


@pytest.mark.parametrize('doc,script,argv', COMMANDS, ids=[f'{d}: {s} {" ".join(a)}' for d, s, a in COMMANDS])
def test_documented_command_parses(doc, script, argv, monkeypatch):
    if '--help' in argv:                        # prints the settings and stops, before any work
        with pytest.raises(SystemExit) as stopped:
            run_until_work(script, list(argv), monkeypatch)
        assert stopped.value.code == 0
        return
    with pytest.raises(Parsed):
        run_until_work(script, list(argv), monkeypatch)


@pytest.mark.parametrize('script,argv', [('sample.py', ['--n_latents=4']), ('train_mdlm.py', ['--degree=2']),
                                         ('train_ar_mtp.py', ['--mtp_window=all']), ('reproduce.py', ['--scale=huge']),
                                         ('data.py', ['--task=zebra', '--size=9']), ('exercises.py', ['--grades'])])
def test_a_stale_command_is_caught(script, argv, monkeypatch):
    """The check above can fail: a misspelled setting, a value of the wrong type, an option the
    task does not have and an unknown scale are errors, raised before any work starts."""
    with pytest.raises(SystemExit):
        run_until_work(script, argv, monkeypatch)


def heading_anchors(path):
    """GitHub's anchors for the headings of a Markdown file: lower case, punctuation dropped,
    spaces to hyphens."""
    text = open(path).read()
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
            for h in re.findall(r'^#+ (.*)$', text, re.M)}


@pytest.mark.parametrize('doc', DOCS)
def test_relative_links_resolve(doc):
    text = open(os.path.join(ROOT, doc)).read()
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target):        # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
        assert os.path.exists(full), f'{doc}: link to {target} : no such file'
        if anchor and full.endswith('.md'):
            assert anchor in heading_anchors(full), f'{doc}: link to {target} : no such heading'


def test_the_readme_counts_the_mutants_there_are():
    """The README says how many lines `.ci/mutants` breaks; a mutant added or dropped without it
    is a stale figure (81 stood there while the list held 82)."""
    mutants = runpy.run_path(os.path.join(ROOT, '.ci', 'mutants'), run_name='not_main')['MUTANTS']
    said = re.findall(r'each of its (\d+) entries', open(os.path.join(ROOT, 'README.md')).read())
    assert said == [str(len(mutants))]
