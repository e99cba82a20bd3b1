"""One error path: every error the package raises for bad input is an InputError, and only ``vppo.cli.main`` (and
``launch_train.sh``'s entry point) reports it: one line on stderr naming what is wrong, exit 2."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import vppo
from vppo.cli import main
from vppo.errors import EXIT_BAD_INPUT, InputError

#: exceptions of the package that are not bad input (a bug check keeps its traceback; a stop is control flow).
#: Name each one and why.
NOT_INPUT = {
    "vppo.training.runner.StoppedBeforeLimit": "a resumable stop before the time limit: vppo train exits 75",
    "vppo.training.vllm_colocate.RolloutPromptMismatch": "vLLM and the trainer tokenised a prompt differently: a bug",
}


def test_every_exception_class_of_the_package_is_an_input_error_or_a_named_bug_check():
    found = {}
    for module in pkgutil.walk_packages(vppo.__path__, "vppo."):
        if module.name == "vppo.__main__":  # runs the command line when imported
            continue
        namespace = vars(importlib.import_module(module.name))
        found.update({f"{module.name}.{value.__name__}": value for value in namespace.values()
                      if isinstance(value, type) and issubclass(value, BaseException)
                      and value.__module__ == module.name})
    assert found, "no exception class found: the walk of the package is broken"
    not_input = sorted(name for name, cls in found.items() if not issubclass(cls, InputError))
    assert not_input == sorted(NOT_INPUT), "raise InputError subclasses for bad input (vppo/errors.py)"


def _train(tmp_path, *extra):
    return ["train", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--recipe", "smoke",
            "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *extra]


BAD_INPUT = {
    "prune-work: no folder": (lambda t: ["prune-work", str(t / "absent")], "absent: no such folder"),
    "doctor: negative gpus": (lambda t: ["doctor", "--gpus", "-1"], "--gpus -1"),
    "figures: bad pair": (lambda t: ["figures", "--out", str(t / "f"), "--paper-model", "tiny"], "MODEL=PAPER_MODEL"),
    "analyze: no prompts": (lambda t: ["analyze", str(t / "c"), "--data", str(t), "--out", str(t / "a.json"),
                                       "--n-prompts", "0"], "--n-prompts"),
    "analyze: bad variant": (lambda t: ["analyze", str(t / "c"), "--data", str(t), "--out", str(t / "a.json"),
                                        "--variants", "black:k3"], "--variants: 'black:k3'"),
    "train: unknown method": (lambda t: _train(t, "--method", "nope"), "unknown method 'nope'"),
    "train: bad --set": (lambda t: _train(t, "--method", "vppo", "--set", "lr"), "--set 'lr': expected KEY=VALUE"),
    "train: no model": (lambda t: _train(t, "--method", "vppo"), "/m: no such directory"),
    "prepare-data: bad --option": (lambda t: ["prepare-data", "eval", "--source", "fixtures", "--out", str(t / "o"),
                                              "--option", "n_rows"], "--option 'n_rows': expected KEY=VALUE"),
    "status: bad --config": (lambda t: ["status", "--root", str(t), "--config", "preset"],
                             "--config 'preset': expected KEY=VALUE"),
    "eval: unknown benchmark": (lambda t: ["eval", str(t / "c"), "--out", str(t / "e"), "--benchmarks", "nope"],
                                "--benchmarks: unknown benchmark(s) ['nope']"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_of_a_command_is_one_line_and_exit_2(case, tmp_path, capsys):
    argv, message = BAD_INPUT[case]
    assert main(argv(tmp_path)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"vppo {argv(tmp_path)[0]}: ") and message in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_the_launcher_reports_a_launch_error_in_one_line(tmp_path, monkeypatch, capsys):
    from vppo.training.launch import main as launch

    for name in ("SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    argv = _train(tmp_path, "--method", "vppo")[1:]
    assert launch(["--dry-run", "--", *argv]) == 0  # smoke: one process, no allocation needed
    capsys.readouterr()
    argv[argv.index("smoke")] = "32b"  # 32b trains on several nodes: outside an allocation it cannot launch
    assert launch(["--dry-run", "--", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("launch_train.sh: recipe 32b needs"), err
