"""The package's layers: the library below, the programs (`timm_kd.cli`) above, launchers for `-m`.

Read from the source (every import, function-local ones included), so a shortcut taken anywhere
fails here rather than in review.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'timm_kd')
# `python -m timm_kd.X` keeps working through these: each only imports its program and calls it.
LAUNCHERS = {
    'timm_kd.train',
    'timm_kd.train.__main__',
    'timm_kd.cache.__main__',
    'timm_kd.hub.__main__',
    'timm_kd.experiments',
    'timm_kd.experiments.__main__',
    'timm_kd.validate',
    'timm_kd.diagnose',
    'timm_kd.demo',
    'timm_kd.recipes',
}


def _modules():
    out = {}
    for folder, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith('.py'):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                if parts[-1] == '__init__':
                    parts = parts[:-1]
                with open(path) as f:
                    out['.'.join(parts)] = (ast.parse(f.read()), file == '__init__.py')
    return out


MODULES = _modules()


def _imports(name):
    """The timm_kd modules `name` imports anywhere in its body."""
    tree, is_package = MODULES[name]
    package = name if is_package else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith('timm_kd'))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[: len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith('timm_kd'):
                target = node.module
            else:
                continue
            for alias in node.names:  # `from .pkg import module` imports the module
                sub = f'{target}.{alias.name}'
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


def _is_program(name):
    return name == 'timm_kd.cli' or name.startswith('timm_kd.cli.') or name in LAUNCHERS


LIBRARY = sorted(m for m in MODULES if not _is_program(m))
# The package's face re-exports the training program's parser, `timm_kd.parse_run(argv)`.
FACE_EXPORTS = {'timm_kd': {'timm_kd.cli.train.parse'}}


@pytest.mark.parametrize('name', LIBRARY)
def test_the_library_imports_no_program_and_parses_no_flags(name):
    programs = {m for m in _imports(name) if _is_program(m)}
    assert programs <= FACE_EXPORTS.get(name, set()), name
    tree, _ = MODULES[name]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == 'ArgumentParser':
            pytest.fail(f'{name} builds a parser (line {node.lineno})')
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in node.args.args + node.args.kwonlyargs:
                text = ast.unparse(arg.annotation) if arg.annotation else ''
                assert 'Namespace' not in text, f'{name}.{node.name} takes a Namespace'


def test_no_module_imports_a_launcher_or_a_main_module():
    for name in MODULES:
        bad = [m for m in _imports(name) if m in LAUNCHERS or m.endswith('__main__')]
        assert not bad, f'{name} imports {bad}'
    for name, (tree, _) in MODULES.items():  # only launchers run as __main__
        runs_as_main = any(
            isinstance(node, ast.If) and '__main__' in ast.unparse(node.test) for node in tree.body
        )
        assert not runs_as_main or name in LAUNCHERS, name


def test_no_import_cycle_between_modules():
    graph = {name: _imports(name) for name in MODULES}
    state = {}

    def visit(name, path):
        state[name] = 'open'
        for dep in sorted(graph[name]):
            if state.get(dep) == 'open':
                cycle = path[path.index(dep) :] + [dep] if dep in path else [name, dep]
                pytest.fail(f'import cycle: {" -> ".join(cycle)}')
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_checker_sees_a_function_local_import():
    # a check that could not fail would prove nothing: the cache program's imports are found
    assert 'timm_kd.cli.train.parse' in _imports('timm_kd.cli.cache')
    assert 'timm_kd.dataset_views' in _imports('timm_kd.unlabeled')


def test_every_folder_of_python_files_is_a_package_the_wheel_ships():
    # setuptools' `packages = find:` ships only folders with an __init__.py; the rest would be
    # missing from the wheel while working in a checkout
    for folder, _, files in os.walk(ROOT):
        if any(f.endswith('.py') for f in files) and '__pycache__' not in folder:
            assert '__init__.py' in files, folder


# The training program translates its flags into the typed run (`timm_kd.run.RunSpec`) here: the
# parser, its checks and the translation (`parse`). Below them the trainer (`timm_kd.training`),
# the stream, the cache build, the fingerprint and the teachers take the run, never the flags.
TRANSLATION = {
    'timm_kd.cli.train.config',
    'timm_kd.cli.train.kd_flags',
    'timm_kd.cli.train.timm_flags',
    'timm_kd.cli.train.students',
    'timm_kd.cli.train.parse',
    'timm_kd.cli.train.flag_roles',
}


def _takes_flags(node):
    for arg in node.args.args + node.args.kwonlyargs:
        text = ast.unparse(arg.annotation) if arg.annotation else ''
        if 'Namespace' in text or arg.arg in ('args', 'sargs'):
            return True
    return False


def _functions_taking_flags(name):
    tree, _ = MODULES[name]
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not node.name.startswith('__')  # torch's __torch_dispatch__(func, types, args, ...)
        and _takes_flags(node)
    ]


@pytest.mark.parametrize(
    'name',
    sorted(
        m for m in MODULES
        if m.startswith(('timm_kd.cli.train', 'timm_kd.cli.cache', 'timm_kd.training'))
        or not _is_program(m)
    ),
)  # fmt: skip
def test_below_the_translation_nothing_takes_the_flags(name):
    if name in TRANSLATION:
        return
    assert not _functions_taking_flags(name), f'{name} takes the flags'


def test_the_stream_and_the_cache_build_read_the_run():
    tree, _ = MODULES['timm_kd.training.build']
    stream = next(n for n in ast.walk(tree) if getattr(n, 'name', '') == 'training_stream')
    assert not _takes_flags(stream) and 'run.' in ast.unparse(stream)
    # a check that could fail: the translation itself takes them
    assert {'run_spec', 'student_spec', 'teacher_setup'} <= set(
        _functions_taking_flags('timm_kd.cli.train.parse')
    )


def test_the_trainer_reads_no_namespace():
    """`timm_kd.training` holds the whole trainer and reads the typed run alone: no `args`."""
    for name in (m for m in MODULES if m.startswith('timm_kd.training')):
        tree, _ = MODULES[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                assert node.id not in ('args', 'sargs'), f'{name} line {node.lineno}'
