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


@pytest.mark.parametrize('name', LIBRARY)
def test_the_library_imports_no_program_and_parses_no_flags(name):
    assert not [m for m in _imports(name) if _is_program(m)], name
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
    assert 'timm_kd.cli.train.build' in _imports('timm_kd.cli.cache')
    assert 'timm_kd.dataset_views' in _imports('timm_kd.unlabeled')


def test_every_folder_of_python_files_is_a_package_the_wheel_ships():
    # setuptools' `packages = find:` ships only folders with an __init__.py; the rest would be
    # missing from the wheel while working in a checkout
    for folder, _, files in os.walk(ROOT):
        if any(f.endswith('.py') for f in files) and '__pycache__' not in folder:
            assert '__init__.py' in files, folder


# The training program translates its flags into the typed run (`timm_kd.run.RunSpec`) here: the
# parser and its checks, and the translation functions of `build`. Below them the stream, the
# cache build, the fingerprint and the teachers take the run, never the flags.
TRANSLATION = {
    'timm_kd.cli.train.config': None,  # None: every function of the module
    'timm_kd.cli.train.kd_flags': None,
    'timm_kd.cli.train.timm_flags': None,
    'timm_kd.cli.train.students': None,
    'timm_kd.cli.train.build': {
        'options', 'dataset_options', 'loader_options', 'setup_process_flags', 'teacher_setup',
        'student_spec', 'run_spec', 'setup_run',
    },
    'timm_kd.cli.train.student_model': {'model_dtype', 'create_student'},
}  # fmt: skip
# The loop's run control, which the run value does not hold: logging, validation and recovery
# intervals, --stop-epoch, BatchNorm syncing, wandb (`test_the_loop_reads_no_run_value_from_flags`)
RUN_CONTROL = {'timm_kd.cli.train.loop': {'build_training', '_init_wandb'}}


def _takes_flags(node):
    for arg in node.args.args + node.args.kwonlyargs:
        text = ast.unparse(arg.annotation) if arg.annotation else ''
        if 'Namespace' in text or arg.arg in ('args', 'sargs'):
            return True
    return False


@pytest.mark.parametrize(
    'name', sorted(m for m in MODULES if m.startswith(('timm_kd.cli.train', 'timm_kd.cli.cache')))
)
def test_below_the_translation_nothing_takes_the_flags(name):
    allowed = {**TRANSLATION, **RUN_CONTROL}
    if name in allowed and allowed[name] is None:
        return
    tree, _ = MODULES[name]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _takes_flags(node):
            assert node.name in allowed.get(name, ()), f'{name}.{node.name} takes the flags'


def test_the_stream_and_the_cache_build_read_the_run():
    tree, _ = MODULES['timm_kd.cli.train.build']
    stream = next(n for n in ast.walk(tree) if getattr(n, 'name', '') == 'training_stream')
    assert not _takes_flags(stream) and 'run.' in ast.unparse(stream)
    # a check that could fail: the translation itself takes them
    run_spec = next(n for n in ast.walk(tree) if getattr(n, 'name', '') == 'run_spec')
    assert _takes_flags(run_spec)


def _run_fields(cls, out):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.add(f.name)
        for kind in (hints[f.name], *typing.get_args(hints[f.name])):
            if dataclasses.is_dataclass(kind):
                _run_fields(kind, out)
    return out


def test_the_loop_reads_no_run_value_from_flags():
    """Below `main` (which translates), the loop reads from the flags only what the run does not
    hold; `students` there is the list of --student strings."""
    from timm_kd.run import RunSpec

    held = _run_fields(RunSpec, set()) - {'students'}
    assert {'batch_size', 'seed', 'mixup_off_epoch', 'amp', 'grad_accum_steps'} <= held
    tree, _ = MODULES['timm_kd.cli.train.loop']
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != 'main'):
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ('args', 't.args'):
                assert node.attr not in held, f'{function.name} reads args.{node.attr}'
