"""The documentation: every shell command in README.md and docs/ runs or is marked as not run here
(and then its flags are still checked), every guide is reachable from the README, no internal link
or anchor is broken, and the generated flag reference is what the parsers say.

The rule for running a command, as CONTRIBUTING.md states it:
- `DATA` (alone or as `DATA/...`) is a small image folder: 3 classes of 32 px images, `train/` and
  `validation/`.
- training and `cache build` get `--img-size 32 --batch-size 8 --workers 0 --device cpu`, and
  `--epochs 1` unless they set `--epochs`; `validate` and `diagnose` get `--batch-size 8 --workers 0
  --device cpu`.
- the documents run in the order of the README's documentation map, each command in order, all in
  one working folder, so a guide may use what an earlier command wrote (`output/train/teacher`).
- a Python block runs as a script in the same folder, after the commands before it: `'DATA'` is
  that image folder and `timm_kd.parse_run` gets the extra flags a training command gets.
A block whose first line is `# not run by the docs test: REASON` is not run; each of its commands
of a timm-kd program is parsed by that program's parser instead, so a renamed flag still fails (a
Python block marked so is compiled).
"""

import os
import re
import shlex

import pytest
from conftest import ROOT

from timm_kd.cli import cache, diagnose, hub, reference, validate
from timm_kd.cli.experiments import pitfall, topk, unlabeled
from timm_kd.cli.train import config
from timm_kd.errors import KDError

NOT_RUN = '# not run by the docs test:'
FENCE = re.compile(r'^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$', re.M | re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
TRAINING = ['--img-size', '32', '--batch-size', '8', '--workers', '0', '--device', 'cpu']
EVALUATION = ['--batch-size', '8', '--workers', '0', '--device', 'cpu']


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def documents():
    """README.md, then the guides in the order of its documentation map."""
    guides = [
        os.path.normpath(t) for t in LINK.findall(_read('README.md').split('## Documentation')[1])
    ]
    return ['README.md'] + [
        g for g in guides if g.startswith('docs' + os.sep) and g.endswith('.md')
    ]


def blocks(path):
    """(marked as not run, commands) of each fenced bash block, in the document's order, and
    (marked, 'python', its text) of each Python block; a command is its tokens, lines joined at a
    trailing backslash, comments dropped."""
    blocks = []
    for match in FENCE.finditer(_read(path)):
        language, text = match.group(2).strip(), match.group(3)
        marked = text.startswith(NOT_RUN)
        if language == 'python':
            blocks.append((marked, 'python', text))
            continue
        if language not in ('bash', 'sh', 'shell'):
            continue
        commands = [
            shlex.split(line, comments=True) for line in text.replace('\\\n', ' ').splitlines()
        ]
        blocks.append((marked, [c for c in commands if c]))
    return blocks


def run_python(path, marked, text, image_folder, monkeypatch):
    """A Python block as a script (compiled only when marked), with the docs test's rule."""
    import timm_kd

    code = compile(text, path, 'exec')
    if marked:
        return
    parse_run = timm_kd.parse_run

    def with_training_flags(argv):
        extra = TRAINING + ([] if '--epochs' in argv else ['--epochs', '1'])
        return parse_run([*with_data(argv, image_folder), *extra])

    monkeypatch.setattr(timm_kd, 'parse_run', with_training_flags)
    try:
        exec(code, {'__name__': '__docs__'})
    finally:
        monkeypatch.setattr(timm_kd, 'parse_run', parse_run)


def program(tokens):
    """(program, its argv) of a command line, or (None, tokens) for a command not of timm-kd."""
    while tokens and re.match(r'^[A-Z_]+=', tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:1] == ['srun']:
        tokens = tokens[1:]
    if tokens[:1] == ['timm-kd-train']:
        return 'train', tokens[1:]
    if tokens[:2] == ['python', 'train_kd.py']:
        return 'train', tokens[2:]
    if tokens[:1] == ['torchrun'] or tokens[:2] == ['python', '-m']:
        if '-m' in tokens:
            i = tokens.index('-m')
            module = tokens[i + 1]
            if module.startswith('timm_kd.'):
                name = module.split('.', 1)[1]
                if name in ('cache', 'hub', 'experiments'):
                    return f'{name} {tokens[i + 2]}', tokens[i + 3 :]
                return name, tokens[i + 2 :]
    return None, tokens


def parse_only(name, argv):
    """The program's own parsing of `argv` (flags and values; no data is read, no model built)."""
    if name == 'train':
        config.parse_args(argv)
    elif name == 'cache build':
        _, rest = cache.build_flags().parse_known_args(argv)
        config.parse_args(rest)
    else:
        parsers = {
            'cache push': cache.push_parser,
            'cache pull': cache.pull_parser,
            'validate': validate.build_parser,
            'diagnose': diagnose.build_parser,
            'experiments pitfall': pitfall.build_parser,
            'experiments unlabeled': unlabeled.build_parser,
            'experiments topk': topk.build_parser,
        }
        if name.startswith('hub '):
            hub.build_parser().parse_args(name.split()[1:] + argv)
        else:
            parsers[name]().parse_args(argv)


def run_command(name, argv, run_cli):
    from timm_kd.cli.train import main as train

    programs = {
        'train': (train, TRAINING),
        'cache build': (lambda a: cache.main(['build', *a]), TRAINING),
        'hub export': (lambda a: hub.main(['export', *a]), []),
        'validate': (validate.main, EVALUATION),
        'diagnose': (diagnose.main, EVALUATION),
    }
    assert name in programs, f'{name}: no rule to run it here; mark its block "{NOT_RUN} ..."'
    cli, extra = programs[name]
    if name in ('train', 'cache build') and '--epochs' not in argv:
        extra = [*extra, '--epochs', '1']
    return run_cli(cli, *argv, *extra)


def with_data(argv, data):
    return [data + t[4:] if t == 'DATA' or t.startswith('DATA/') else t for t in argv]


def check_command(path, marked, tokens, image_folder, run_cli):
    """Parse a command of a marked block; run any other, which must be a timm-kd command."""
    name, argv = program(tokens)
    line = ' '.join(tokens)
    if marked:
        if name is not None:
            try:
                parse_only(name, argv)
            except (SystemExit, KDError) as e:
                pytest.fail(f'{path}: `{line}` is refused by its parser: {e}')
        return
    assert name is not None, f'{path}: `{line}` is not a timm-kd command; mark its block'
    done = run_command(name, with_data(argv, image_folder), run_cli)
    assert done.returncode == 0, f'{path}: `{line}` failed: {done.stderr[-2000:]}'


def test_every_command_runs_or_is_marked(tmp_path, image_folder, run_cli, monkeypatch):
    """One test, as the guides build on each other: each document's commands run in the README's
    order in one working folder (as separate tests, parallel workers would split them)."""
    monkeypatch.chdir(tmp_path)
    for path in documents():
        for marked, *block in blocks(path):
            if block[0] == 'python':
                run_python(path, marked, block[1], image_folder, monkeypatch)
                continue
            for tokens in block[0]:
                check_command(path, marked, tokens, image_folder, run_cli)


def test_every_guide_is_reachable_from_the_readme():
    linked = set(documents())
    guides = {os.path.join('docs', f) for f in os.listdir(os.path.join(ROOT, 'docs'))}
    assert {g for g in guides if g.endswith('.md')} <= linked


def anchors(text):
    """The anchors a Markdown host makes of a document's headings (GitHub's rule: lower case,
    punctuation dropped, spaces to hyphens, repeats numbered)."""
    seen, out = {}, set()
    for heading in re.findall(r'^#{1,6} +(.+?) *$', FENCE.sub('', text), re.M):
        slug = reference.anchor(heading.replace('`', ''))
        out.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
        seen[slug] = seen.get(slug, 0) + 1
    return out


MARKDOWN = ['README.md', 'CONTRIBUTING.md', os.path.join('benchmarks', 'README.md')] + [
    os.path.join('docs', f)
    for f in sorted(os.listdir(os.path.join(ROOT, 'docs')))
    if f.endswith('.md')
]


@pytest.mark.parametrize('path', MARKDOWN)
def test_no_internal_link_or_anchor_is_broken(path):
    text = FENCE.sub('', _read(path))
    broken = []
    for target in LINK.findall(text):
        if re.match(r'^[a-z]+:', target):
            continue  # https:, mailto: (not checked offline)
        file, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(f'{target} (no file {resolved})')
        elif anchor and anchor not in anchors(_read(resolved)):
            broken.append(f'{target} (no heading makes #{anchor} in {resolved})')
    assert not broken, f'{path}: ' + '; '.join(broken)


def test_the_generated_documentation_is_what_the_parsers_say():
    stale = [p for p, text in reference.generated(ROOT).items() if _read(p) != text]
    assert not stale, f'{stale} differ from the parsers: run `make docs`'


def test_every_module_over_420_lines_has_its_reason_in_contributing():
    contributing = _read('CONTRIBUTING.md')
    long = []
    for folder, _, files in os.walk(os.path.join(ROOT, 'timm_kd')):
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), ROOT)
            if name.endswith('.py') and len(_read(path).splitlines()) > 420:
                long.append(path)
    unexplained = [p for p in long if f'`{p}`' not in contributing]
    assert not unexplained, f'{unexplained}: split them, or say why not in CONTRIBUTING.md'
