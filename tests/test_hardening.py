"""Bad input and published folders, as a demanding user meets them (issue 11): every command answers expected
bad input with one line `vppo <command>: ...` and exit 2, never deletes or replaces a folder it did not make,
never writes outside its output, and publishes folders with the permissions the umask gives."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from vppo.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and everything printed; a raised exception (a traceback for the user) fails the test."""
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def assert_one_line_error(rc: int, printed: str, command: str, *needles: str) -> None:
    lines = [line for line in printed.splitlines() if line.startswith(f"vppo {command}: ")]
    assert rc == 2 and len(lines) == 1, printed
    assert "Traceback" not in printed
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------- 1. never delete user folders

def test_train_refuses_an_out_folder_it_did_not_make(capsys, tmp_path, tiny_model_dir):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    rc, printed = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nodata"),
                          "--recipe", "smoke", "--method", "grpo", "--work-dir", str(tmp_path / "work"),
                          "--out", str(victim))
    assert_one_line_error(rc, printed, "train", str(victim))
    assert (victim / "thesis.tex").read_text() == "years of work"


def test_publish_dir_never_replaces_a_filled_folder(tmp_path):
    from vppo.fileio import publish_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        with publish_dir(out) as tmp:
            (tmp / "new.txt").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_a_folder_filled_while_publishing_is_not_lost(tmp_path):
    from vppo.fileio import publish_dir

    out = tmp_path / "out"
    with pytest.raises(FileExistsError):
        with publish_dir(out) as tmp:
            (tmp / "new.txt").write_text("x")
            out.mkdir()
            (out / "arrived.txt").write_text("someone else's")
    assert sorted(p.name for p in out.iterdir()) == ["arrived.txt"]


def test_prepare_eval_data_does_not_write_into_a_filled_folder(capsys, tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "geo3k.json").write_text("my own file")
    rc, printed = run_cli(capsys, "prepare-data", "eval", "--source", "fixtures", "--out", str(out),
                          "--option", "n_rows=1")
    assert_one_line_error(rc, printed, "prepare-data", str(out))
    assert (out / "geo3k.json").read_text() == "my own file" and len(list(out.iterdir())) == 1


# ---------------------------------------------------------------------------- 7. the umask decides

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_published_folders_follow_the_umask(tmp_path, umask):
    from vppo.data.train_data import prepare_train_data

    previous = os.umask(umask)
    try:
        out = prepare_train_data("synthetic", tmp_path / "data", n_rows=2)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "manifest.json").stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------------------- 4. names derived from data

def test_row_ids_cannot_write_outside_the_output(tmp_path):
    import datasets
    from PIL import Image

    from vppo.data.train_data import convert_dataset, read_layout

    image = Image.new("RGB", (8, 8), (255, 0, 0))
    ids = ["../../../ESCAPED", "/tmp/ABSOLUTE", "..", "ok-id", "a/b"]
    rows = datasets.Dataset.from_list([{"id": i, "problem": "<image>How many?", "answer": "1", "images": [image]}
                                       for i in ids])
    out = convert_dataset(rows, tmp_path / "deep" / "er" / "data", source="hub-like")
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert all(out in p.parents for p in written), written
    assert not (tmp_path / "ESCAPED-0.png").exists() and not os.path.exists("/tmp/ABSOLUTE-0.png")
    layout = read_layout(out)
    assert [row["id"] for row in layout] == ids  # the ids themselves are kept
    names = [row["images"][0] for row in layout]
    assert len(set(names)) == len(ids) and all(n.startswith("images/") and n.count("/") == 1 for n in names)
    assert "images/ok-id-0.png" in names  # plain ids keep their name (synthetic data stays byte-identical)


def test_duplicate_row_ids_are_refused_not_overwritten(tmp_path):
    from PIL import Image

    from vppo.data.train_data import TrainDataError, write_layout

    image = Image.new("RGB", (8, 8))
    rows = [({"id": "same", "problem": "<image>q", "answer": "1"}, [image])] * 2
    with pytest.raises(TrainDataError, match="row 2: field 'id' 'same' repeats row 1"):
        write_layout(rows, tmp_path / "data", source="src")
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- 6. one-line errors

def test_prepare_data_errors_are_one_line(capsys, tmp_path):
    train = ["prepare-data", "train", "--source", "synthetic", "--out"]
    cases = [
        (train + [str(tmp_path / "a"), "--option", "n_rows=abc"], "n_rows='abc'"),
        (train + [str(tmp_path / "b"), "--option", "nrows=3"], "nrows: unknown option"),
        (train + [str(tmp_path / "b2"), "--option", "n_rows=0"], "n_rows=0"),
        (["prepare-data", "train", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "c")], "missing"),
        (["prepare-data", "train", "--source", "hub", "--out", str(tmp_path / "d")], "cannot load from the hub"),
        (["prepare-data", "eval", "--source", "fixtures", "--out", str(tmp_path / "e"), "--option", "n_row=2"],
         "n_row: unknown option"),
        (["prepare-data", "eval", "--source", "hub", "--out", str(tmp_path / "f")], "cannot download"),
        (["prepare-data", "eval", "--source", "fixtures", "--out", str(tmp_path / "g"), "--option",
          "benchmarks=geo4k"], "geo4k"),
    ]
    for argv, needle in cases:
        rc, printed = run_cli(capsys, *argv)
        assert_one_line_error(rc, printed, "prepare-data", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-made left behind
    rc, _ = run_cli(capsys, *(train + [str(tmp_path / "h"), "--option", "n_rows=2"]))
    assert rc == 0
    rc, printed = run_cli(capsys, *(train + [str(tmp_path / "h"), "--option", "n_rows=2"]))  # exists
    assert_one_line_error(rc, printed, "prepare-data", "already prepared")


def test_fetch_model_errors_are_one_line(capsys, tmp_path, tiny_model_dir):
    rc, printed = run_cli(capsys, "fetch-model", "nobody/no-such-model", str(tmp_path / "m"))
    assert_one_line_error(rc, printed, "fetch-model", "nobody/no-such-model")
    rc, printed = run_cli(capsys, "fetch-model", str(tiny_model_dir), str(tiny_model_dir.parent))  # exists
    assert_one_line_error(rc, printed, "fetch-model", "already exists")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, printed = run_cli(capsys, "fetch-model", str(broken), str(tmp_path / "copy"))
    assert_one_line_error(rc, printed, "fetch-model", "model.safetensors", "unreadable weights")
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("override, needle", [
    ("micro_batch_responses=0", "micro_batch_responses"), ("num_generations=0", "num_generations"),
    ("max_completion_length=0", "max_completion_length"), ("bf16=5", "bf16"), ("learning_rate=[", "not valid YAML"),
])
def test_bad_recipe_values_are_one_line_errors(capsys, tmp_path, tiny_model_dir, override, needle):
    rc, printed = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--recipe",
                          "smoke", "--method", "grpo", "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                          "--set", override)
    assert_one_line_error(rc, printed, "train", needle)


def test_the_method_grammar_is_defined_once():
    from vppo.algorithm import METHOD_PRESETS, get_method
    from vppo.catalog import METHOD_DESCRIPTIONS, METHOD_PAPER_NAMES, UNTRAINED_METHODS, parse_method

    # every method is described; a paper label only where the paper has the row (not the dependency-pass arms)
    assert set(METHOD_PRESETS) == set(METHOD_DESCRIPTIONS) - set(UNTRAINED_METHODS)
    assert set(METHOD_PAPER_NAMES) <= set(METHOD_PRESETS) | set(UNTRAINED_METHODS)
    for name in ("vppo_k0.0", "vppo_k0", "vppo_k1.01", "vppo_k-0.5", "ppo"):
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(name)
    assert parse_method("base") == ("base", None) and parse_method("vppo_k1") == ("vppo", 1.0)
    assert get_method("vppo_k0.6").keep_ratio == 0.6


# ---------------------------------------------------------------------------- 8. missing inputs are refused

@pytest.mark.parametrize("command", ["tables", "figures", "report"])
def test_reporting_commands_refuse_input_folders_that_do_not_exist(capsys, tmp_path, command):
    missing = str(tmp_path / "no-such-folder")
    argv = {
        "tables": ["--table", "main", "--model", "tiny", "--eval-root", missing, "--reference-dir",
                   str(REFERENCE), "--out", str(tmp_path / "t")],
        "figures": ["--eval-root", missing, "--out", str(tmp_path / "f")],
        "report": ["--tables", missing, "--figures", missing, "--eval-root", missing, "--out", str(tmp_path / "r.html")],
    }[command]
    rc, printed = run_cli(capsys, command, *argv)
    assert_one_line_error(rc, printed, command, missing, "no such folder")
    assert not any(tmp_path.iterdir())


def _eval_data_with(root, geo3k_text: str | None = None):
    """Prepared fixtures for geo3k, with geo3k.json replaced (the manifest updated to match, as if so prepared)."""
    from vppo.data.eval_data import MANIFEST, benchmark_sha256, prepare_eval_data

    data = prepare_eval_data("fixtures", root, n_rows=2, benchmarks="geo3k")
    if geo3k_text is not None:
        (data / "geo3k.json").write_text(geo3k_text)
        manifest = json.loads((data / MANIFEST).read_text())
        manifest["benchmarks"]["geo3k"]["sha256"] = benchmark_sha256(data, "geo3k")
        (data / MANIFEST).write_text(json.dumps(manifest))
    return data


def test_eval_errors_are_one_line(capsys, tmp_path, tiny_model_dir):
    good = _eval_data_with(tmp_path / "good")
    rows = json.loads((good / "geo3k.json").read_text())
    # every row is scored (an empty answer is simply wrong), but a row whose image is gone cannot be
    no_images = [{**row, "images": ["images/geo3k/gone.png"]} for row in rows]
    partial = _eval_data_with(tmp_path / "partial")
    (partial / "manifest.json").unlink()
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:4096])
    cases = [
        (tiny_model_dir, _eval_data_with(tmp_path / "truncated", (good / "geo3k.json").read_text()[:60]), [],
         "not valid JSON"),
        (tiny_model_dir, _eval_data_with(tmp_path / "dict", '{"rows": []}'), [], "expected a JSON list"),
        (tiny_model_dir, _eval_data_with(tmp_path / "no-images", json.dumps(no_images)), [], "row 0"),
        (tiny_model_dir, partial, [], "no manifest.json"),
        (tiny_model_dir, good, ["--samples", "0"], "--samples 0"),
        (broken, good, [], "unreadable weights"),
    ]
    for checkpoint, data, extra, needle in cases:
        out = tmp_path / "out" / data.name
        rc, printed = run_cli(capsys, "eval", str(checkpoint), "--data", str(data), "--benchmarks", "geo3k",
                              "--out", str(out), *extra)
        assert_one_line_error(rc, printed, "eval", needle)
        assert not list(out.glob("geo3k*"))  # no result written


@pytest.mark.parametrize("method, override, needle", [
    ("vppo", "dependency_estimator=k2", "'dependency_estimator'"), ("vppo", "masking=black", "'masking'"),
    ("dapo", "masking=grey", "no masked-image pass"),
])
def test_bad_dependency_options_are_one_line_errors(capsys, tmp_path, tiny_model_dir, method, override, needle):
    rc, printed = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--recipe",
                          "smoke", "--method", method, "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                          "--set", override)
    assert_one_line_error(rc, printed, "train", needle)
