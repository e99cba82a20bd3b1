"""Every import in the package points down: a module imports only its own stage or lower floors.

Floors, lowest first (the maths and shared plumbing at the ground, the command line on top):
0 the foundation (``vppo/*.py`` but the commands), 1 ``vppo/data``, 2 ``vppo/training`` and
``vppo/evaluation`` (siblings: neither imports the other), 3 ``vppo/reporting``, 4 the commands.
Deferred imports inside functions count too: hiding a loop in a function body does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vppo"

#: Module (dotted, longest prefix wins) -> floor. A module that matches none fails the test: place it first.
FLOORS = {
    "vppo": 0, "vppo.algorithm": 0, "vppo.algorithm_checks": 0, "vppo.catalog": 0, "vppo.errors": 0,
    "vppo.eval_images": 0, "vppo.fileio": 0, "vppo.masking": 0, "vppo.model_families": 0, "vppo.modeling": 0, "vppo.reward": 0,
    "vppo.progress": 0, "vppo.reference": 0, "vppo.rollout": 0, "vppo.config_coercion": 0,
    "vppo.data": 1,
    "vppo.training": 2, "vppo.evaluation": 2,
    "vppo.reporting": 3,
    "vppo.cli": 4, "vppo.__main__": 4, "vppo.doctor": 4,
}

#: Stages on one floor that must not import each other (the pipeline's two branches).
SIBLINGS = {"vppo.training", "vppo.evaluation"}


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> tuple[str, int]:
    """(the stage a module belongs to, its floor): the longest FLOORS prefix of ``module``."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS:
            if n == 1 and len(parts) > 1 and module not in FLOORS:
                break  # ``vppo.<new>`` is not the package itself: it must be placed explicitly
            return prefix, FLOORS[prefix]
    raise KeyError(module)


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """(line, dotted module) for every ``vppo`` import in the file, at any depth (deferred ones too).

    ``root`` is the folder holding the ``vppo`` package, used to tell ``from vppo.x import module`` from
    ``from vppo.x import name``.
    """
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # ``from vppo.x import y`` may name a module y or a name in x
                candidate = f"{base}.{alias.name}"
                is_module = ((root / (candidate.replace(".", "/") + ".py")).exists()
                             or (root / candidate.replace(".", "/")).is_dir())
                found.append((node.lineno, candidate if is_module else base))
    return sorted({(line, name) for line, name in found if name == "vppo" or name.startswith("vppo.")})


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = module_name(path)
        try:
            own_stage, own_floor = stage(own)
        except KeyError:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: module {own} has no floor in FLOORS")
            continue
        for line, target in imported_modules(path):
            try:
                target_stage, target_floor = stage(target)
            except KeyError:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}, which has no floor")
                continue
            if target_floor > own_floor or {own_stage, target_stage} == SIBLINGS:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} (floor {own_floor}) imports "
                                f"{target} (floor {target_floor})")
    return problems


def test_every_import_points_down():
    problems = upward_imports()
    assert not problems, "imports that point up or sideways:\n" + "\n".join(problems)


@pytest.mark.parametrize("module, floor", [("vppo.cli", 4), ("vppo.data.models", 1), ("vppo.training.recipes", 2),
                                           ("vppo.masking", 0), ("vppo", 0)])
def test_modules_are_placed_on_their_floor(module, floor):
    assert stage(module)[1] == floor


def test_a_new_module_must_be_placed():
    with pytest.raises(KeyError):
        stage("vppo.newthing")


def test_deferred_and_relative_imports_are_seen(tmp_path):
    fake = tmp_path / "vppo" / "data" / "x.py"
    fake.parent.mkdir(parents=True)
    (tmp_path / "vppo" / "reporting").mkdir()
    fake.write_text("import os\ndef f():\n    from vppo.reporting import tables\n    from ..cli import main\n")
    assert [name for _, name in imported_modules(fake, root=tmp_path)] == ["vppo.reporting", "vppo.cli"]
