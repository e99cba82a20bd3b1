"""Every import in the package points down: a module imports only its own stage or lower floors.

Floors, lowest first (the maths and shared plumbing at the ground, the command line on top):
0 the foundation (``vppo/*.py`` but the commands), 1 ``vppo/data``, 2 ``vppo/training`` and
``vppo/evaluation`` (siblings: neither imports the other), 3 ``vppo/reporting``, 4 the commands and the
workflow's plan (``vppo/workflow_plan``, read by the Snakemake rules).
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
    "vppo.workflow_plan": 4,  # the Snakemake rules' helpers: an entry point beside the command line
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


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import of a module under ``package`` (a ``vppo`` folder) that points up or sideways, and every module
    without a floor."""
    root = package.parent
    problems = []
    for path in sorted(package.rglob("*.py")):
        own = module_name(path, root)
        try:
            own_stage, own_floor = stage(own)
        except KeyError:
            problems.append(f"{path.relative_to(root)}: module {own} has no floor in FLOORS")
            continue
        for line, target in imported_modules(path, root):
            try:
                target_stage, target_floor = stage(target)
            except KeyError:
                problems.append(f"{path.relative_to(root)}:{line}: imports {target}, which has no floor")
                continue
            if target_floor > own_floor or {own_stage, target_stage} == SIBLINGS:
                problems.append(f"{path.relative_to(root)}:{line}: {own} (floor {own_floor}) imports "
                                f"{target} (floor {target_floor})")
    return problems


def test_every_import_points_down():
    problems = upward_imports()
    assert not problems, "imports that point up or sideways:\n" + "\n".join(problems)


#: an import planted in a copy of the package -> what the check must then report (file, code, message)
PLANTED = {
    "deferred relative import, up": ("data/train_data.py", "\n\ndef _planted():\n    from ..cli import main\n",
                                     "vppo.data.train_data (floor 1) imports vppo.cli (floor 4)"),
    "from the ground up": ("masking.py", "\nimport vppo.reporting.tables\n",
                           "vppo.masking (floor 0) imports vppo.reporting.tables (floor 3)"),
    "sideways between siblings": ("training/batch.py", "\nfrom vppo.evaluation import protocol\n",
                                  "vppo.training.batch (floor 2) imports vppo.evaluation.protocol (floor 2)"),
    "a module without a floor": ("newthing.py", "from vppo import errors\n", "module vppo.newthing has no floor"),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_an_upward_import_planted_in_the_package_fails_the_check(case, tmp_path):
    import shutil

    copy = tmp_path / "vppo"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))  # clean: the test above
    relative, code, message = PLANTED[case]
    planted = copy / relative
    planted.write_text((planted.read_text() if planted.exists() else "") + code)
    (problem,) = upward_imports(copy)
    assert message in problem, problem
