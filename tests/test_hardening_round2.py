"""Hardening, round 2 (issue 22), as a demanding user meets it: `vppo eval` never replaces a file it did not write
nor mixes two models' results in one folder, training recomputes its data's checksum, outputs that cannot be
written are refused before the work (read-only and full disks in a mount namespace), bad checkpoints, manifests
and bytes are one line and exit 2, killed conversions leave nothing for good, published files follow the
umask, and the workflow types nested `--config` values and keeps each preset's data apart."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_hardening import _eval_data_with, assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY_EVAL = ["--benchmarks", "geo3k", "--samples", "1", "--max-new-tokens", "4", "--limit", "1"]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from vppo.data.eval_data import prepare_eval_data

    return prepare_eval_data("fixtures", tmp_path_factory.mktemp("eval-data") / "data", n_rows=2,
                             benchmarks="geo3k,mmk12")


def _eval(capsys, checkpoint, data, out, *extra):
    return run_cli(capsys, "eval", str(checkpoint), "--data", str(data), "--out", str(out), *TINY_EVAL, *extra)


# ---------------------------------------------------------------------------- 1. eval replaces only its own

def test_eval_never_replaces_files_it_did_not_write(capsys, tmp_path, tiny_model_dir, eval_data):
    precious = tmp_path / "precious.txt"
    precious.write_text("years of work")
    plain, linked, samples = tmp_path / "plain", tmp_path / "linked", tmp_path / "samples"
    for folder in (plain, linked, samples):
        folder.mkdir()
    (plain / "geo3k.json").write_text('{"my": "own file"}')
    (linked / "geo3k.json").symlink_to(precious)
    (samples / "geo3k.samples.jsonl").write_text("my notes\n")
    for out, name in ((plain, "geo3k.json"), (linked, "geo3k.json"), (samples, "geo3k.samples.jsonl")):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        rc, printed = _eval(capsys, tiny_model_dir, eval_data, out, "--overwrite")
        assert_one_line_error(rc, printed, "eval", str(out / name), "left alone")
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not even a hash cache was added
    assert precious.read_text() == "years of work"


def test_eval_keeps_one_models_results_per_folder(capsys, tmp_path, tiny_model_dir, eval_data):
    out = tmp_path / "out"
    rc, printed = _eval(capsys, tiny_model_dir, eval_data, out, "--model-label", "a", "--method-label", "grpo")
    assert rc == 0, printed
    first = (out / "geo3k.json").read_bytes()
    rc, printed = _eval(capsys, tiny_model_dir, eval_data, out, "--model-label", "b", "--method-label", "grpo")
    assert_one_line_error(rc, printed, "eval", "geo3k.json", "model 'a'", "--overwrite")
    rc, printed = run_cli(capsys, "eval", str(tiny_model_dir), "--data", str(eval_data), "--out", str(out),
                          "--model-label", "b", "--method-label", "grpo", "--overwrite",
                          *[a if a != "geo3k" else "mmk12" for a in TINY_EVAL])
    assert_one_line_error(rc, printed, "eval", "mix two models")  # another benchmark: the folder would mix
    assert (out / "geo3k.json").read_bytes() == first and not (out / "mmk12.json").exists()
    rc, printed = _eval(capsys, tiny_model_dir, eval_data, out, "--model-label", "b", "--method-label", "grpo",
                        "--overwrite")
    assert rc == 0, printed
    assert json.loads((out / "geo3k.json").read_text())["model"] == "b"


# ---------------------------------------------------------------------------- 5. a refusal leaves nothing

def test_a_refused_eval_creates_no_out_folder(capsys, tmp_path, tiny_model_dir):
    empty = _eval_data_with(tmp_path / "empty", "[]")  # prepared, but geo3k holds no row
    out = tmp_path / "new" / "deeper" / "out"
    rc, printed = _eval(capsys, tiny_model_dir, empty, out)
    assert_one_line_error(rc, printed, "eval", "no usable row")
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------- 2. training data checksum

def test_training_refuses_data_edited_after_preparing(capsys, tmp_path, tiny_model_dir):
    from vppo.data.train_data import prepare_train_data

    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=2)
    rows = (data / "train.jsonl").read_text().splitlines()
    edited = json.loads(rows[0])
    edited["answer"] = str(int(edited["answer"]) + 1)  # an answer corrected in place
    (data / "train.jsonl").write_text("\n".join([json.dumps(edited, sort_keys=True)] + rows[1:]) + "\n")
    rc, printed = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--data", str(data), "--recipe", "smoke",
                          "--method", "grpo", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "run"),
                          "--max-steps", "1")
    assert_one_line_error(rc, printed, "train", str(data), "changed since it was prepared")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- 4. one line, exit 2

def test_damaged_manifests_and_non_utf8_questions_are_one_line(capsys, tmp_path, tiny_model_dir):
    from vppo.catalog import resolve_benchmarks
    from vppo.data.eval_data import prepare_eval_data
    from vppo.data.eval_fixtures import write_llamafactory_fixtures
    from vppo.data.train_data import prepare_train_data

    train = prepare_train_data("synthetic", tmp_path / "train", n_rows=2)
    (train / "manifest.json").write_text('{"rows": 2, "sha')
    rc, printed = run_cli(capsys, "train", "--model", str(tiny_model_dir), "--data", str(train), "--recipe", "smoke",
                          "--method", "grpo", "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"))
    assert_one_line_error(rc, printed, "train", "manifest.json", "not valid JSON")

    evaluation = prepare_eval_data("fixtures", tmp_path / "eval", n_rows=1, benchmarks="geo3k")
    (evaluation / "manifest.json").write_text("{broken")
    rc, printed = _eval(capsys, tiny_model_dir, evaluation, tmp_path / "e")
    assert_one_line_error(rc, printed, "eval", "manifest.json", "not valid JSON")

    layout = prepare_train_data("synthetic", tmp_path / "layout", n_rows=2)
    text = (layout / "train.jsonl").read_bytes()
    (layout / "train.jsonl").write_bytes(text.replace(b"How many", b"How m\xe4ny", 1))  # Latin-1, not UTF-8
    rc, printed = run_cli(capsys, "prepare-data", "train", "--source", str(layout), "--out", str(tmp_path / "t2"))
    assert_one_line_error(rc, printed, "prepare-data", "train.jsonl line 1", "not UTF-8")

    source = write_llamafactory_fixtures(tmp_path / "lf", 1, 0, resolve_benchmarks("geo3k"), False)
    json_file = next(p for p in (source / "data" / "vppo").glob("*.json"))
    json_file.write_bytes(json_file.read_bytes().replace(b"[", b"[\xff", 1))
    rc, printed = run_cli(capsys, "prepare-data", "eval", "--source", str(source), "--out", str(tmp_path / "e2"),
                          "--option", "benchmarks=geo3k", "--option", "expected_rows=1")
    assert_one_line_error(rc, printed, "prepare-data", json_file.name, "not valid JSON")
    assert not (tmp_path / "t2").exists() and not (tmp_path / "e2").exists()


def _other_family(tiny_model_dir, folder):
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama",
                                                    "architectures": ["LlamaForCausalLM"]}))
    return folder


def test_foreign_or_incomplete_checkpoints_are_one_line(capsys, tmp_path, tiny_model_dir, eval_data):
    llama = _other_family(tiny_model_dir, tmp_path / "llama")
    no_processor = tmp_path / "no-processor"
    shutil.copytree(tiny_model_dir, no_processor)
    (no_processor / "processor_config.json").unlink()
    for checkpoint, needle in ((llama, "'llama'"), (no_processor, "processor_config.json")):
        rc, printed = _eval(capsys, checkpoint, eval_data, tmp_path / "e" / checkpoint.name)
        assert_one_line_error(rc, printed, "eval", str(checkpoint), needle)
        rc, printed = run_cli(capsys, "train", "--model", str(checkpoint), "--data", str(tmp_path), "--recipe",
                              "smoke", "--method", "grpo", "--work-dir", str(tmp_path / "w"), "--out",
                              str(tmp_path / "o"))
        assert_one_line_error(rc, printed, "train", str(checkpoint), needle)
    rc, printed = run_cli(capsys, "convert", str(llama), "--out", str(tmp_path / "hf"))
    assert_one_line_error(rc, printed, "convert", "'llama'")
    assert not (tmp_path / "e").exists() and not (tmp_path / "hf").exists()


def test_eval_and_convert_refuse_existing_outputs_with_exit_2(capsys, tmp_path, tiny_model_dir, eval_data):
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    rc, printed = _eval(capsys, tiny_model_dir, eval_data, a_file)
    assert_one_line_error(rc, printed, "eval", str(a_file), "not a folder")
    filled = tmp_path / "filled"
    filled.mkdir()
    (filled / "notes.txt").write_text("mine")
    rc, printed = run_cli(capsys, "convert", str(tiny_model_dir), "--out", str(filled))
    assert_one_line_error(rc, printed, "convert", str(filled), "not a finished conversion")
    rc, printed = run_cli(capsys, "convert", str(tmp_path / "absent"), "--out", str(tmp_path / "hf"))
    assert_one_line_error(rc, printed, "convert", "absent", "no such directory")
    assert a_file.read_text() == "mine" and [p.name for p in filled.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------------- 3 + 4. read-only and full disks

NAMESPACE_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, sys, traceback
    from vppo.cli import main

    report = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except BaseException:
                rc, err = "exception", io.StringIO(err.getvalue() + traceback.format_exc())
        report.append({"rc": rc, "stderr": err.getvalue()})
    print(json.dumps({"commands": report, "left_on_the_full_disk": sorted(os.listdir(sys.argv[2]))}))
""")


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and mount namespaces (unshare -m) to mount small file systems")
def test_read_only_and_full_disks_are_refused_in_one_line(tmp_path, tiny_model_dir, eval_data):
    """In a private mount namespace: RO, a read-only tmpfs, and FULL, a tmpfs filled to the last byte."""
    from vppo.data.train_data import prepare_train_data

    data = prepare_train_data("synthetic", tmp_path / "train", n_rows=2)
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir(), full.mkdir()
    train = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--recipe", "smoke", "--method", "grpo",
             "--max-steps", "2"]
    eval_ = ["eval", str(tiny_model_dir), "--data", str(eval_data), *TINY_EVAL]
    commands = {
        "train, read-only --out": train + ["--work-dir", str(tmp_path / "work"), "--out", str(ro / "run")],
        "train, read-only --work-dir": train + ["--work-dir", str(ro / "work"), "--out", str(tmp_path / "run")],
        "eval, read-only --out": eval_ + ["--out", str(ro / "eval")],
        "convert, read-only --out": ["convert", str(tiny_model_dir), "--out", str(ro / "hf")],
        "eval, full disk": eval_ + ["--out", str(full / "eval")],
        "convert, full disk": ["convert", str(tiny_model_dir), "--out", str(full / "hf")],
    }
    shell = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && mount -t tmpfs -o size=256k tmpfs {full} && "
             f"(dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null; true) && "
             f'exec {sys.executable} -c "$0" "$1" "$2"')
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell, NAMESPACE_SCRIPT,
                           json.dumps(list(commands.values())), str(full)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    for name, outcome in zip(commands, report["commands"]):
        needle = "cannot create files" if "read-only" in name else "No space left on device"
        assert_one_line_error(outcome["rc"], outcome["stderr"], commands[name][0], needle)
    assert report["left_on_the_full_disk"] == ["filler"]  # no --out, no .partial-* folder, no hash cache
    assert not (tmp_path / "run").exists() and not (tmp_path / "work").exists()  # refused before any training


# ---------------------------------------------------------------------------- 5. leftovers of killed runs

def test_stale_partials_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    from vppo.data.train_data import prepare_train_data

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".data.partial-{host}-{dead.pid}-abc123"
    running = tmp_path / f".data.partial-{host}-{os.getpid()}-def456"  # a run still building (this process)
    elsewhere = tmp_path / f".data.partial-other-host.example-{dead.pid}-ghi789"  # cannot be looked up here
    foreign = tmp_path / ".data.partial-mine"  # not a name we make
    for folder in (stale, running, elsewhere, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    prepare_train_data("synthetic", tmp_path / "data", n_rows=1)
    assert not stale.exists()
    assert running.exists() and elsewhere.exists() and foreign.exists()
    assert (tmp_path / "data" / "manifest.json").is_file()


# ---------------------------------------------------------------------------- 6. the umask decides

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_published_weights_follow_the_umask(tmp_path, tiny_model_dir, umask):
    from vppo.data.models import fetch_model

    assert stat.S_IMODE((tiny_model_dir / "model.safetensors").stat().st_mode) == 0o600  # as safetensors writes
    previous = os.umask(umask)
    try:
        out = fetch_model(str(tiny_model_dir), tmp_path / "model")
    finally:
        os.umask(previous)
    for path in [out, *out.iterdir()]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_apply_umask_leaves_hard_linked_files_alone(tmp_path):
    from vppo.fileio import publish_dir

    source = tmp_path / "source.png"
    source.write_bytes(b"someone else's image")
    source.chmod(0o600)
    with publish_dir(tmp_path / "out") as tmp:
        os.link(source, tmp / "image.png")  # how eval data imports images (vppo.data.eval_data)
        (tmp / "ours.txt").write_text("x")
        (tmp / "ours.txt").chmod(0o600)
    assert stat.S_IMODE(source.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "ours.txt").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- 7 + 8. the workflow

@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    from test_workflow import copy_checkout

    return copy_checkout(tmp_path_factory.mktemp("checkout"))


def _snakemake(checkout, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--cores", "1", *args],
                          cwd=checkout, capture_output=True, text=True, timeout=600)


def test_nested_config_values_are_typed_by_the_schema(checkout):
    done = _snakemake(checkout, "--config", "train={max_steps: 3, prune_work: false}", "eval={samples: 2}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "--max-steps 3" in output and "--samples 2" in output and "prune-work" not in output
    done = _snakemake(checkout, "--config", "eval={samples: many}")
    assert done.returncode != 0
    assert "--config eval.samples='many': expected integer" in done.stdout + done.stderr


def test_each_preset_prepares_its_data_in_its_own_folder(checkout):
    plans = {}
    for preset in ("default", "mini"):
        done = _snakemake(checkout, "--config", f"preset={preset}")
        assert done.returncode == 0, done.stdout + done.stderr
        plans[preset] = done.stdout
    for preset, plan in plans.items():
        prepared = {line.split("output: ", 1)[1] for line in plan.splitlines() if "output: resources/data/" in line}
        assert prepared == {f"resources/data/{preset}/train", f"resources/data/{preset}/eval"}
        assert f"--data resources/data/{preset}/train" in plan and f"--data resources/data/{preset}/eval" in plan
    assert "resources/data/default" not in plans["mini"]  # a mini run leaves the default preset's data alone


def test_the_data_checksum_ignores_what_a_workflow_adds_beside_the_layout(tmp_path):
    """Snakemake writes `.snakemake_timestamp` into every directory output: the DAG's training data must still
    verify (the first version of the recomputed checksum stopped every DAG training run), and edits to the rows
    must not."""
    from vppo.data.train_data import TrainDataError, synthetic_example, verified_checksum, write_layout

    data = write_layout((synthetic_example(i, seed=0)[0:1] + ([synthetic_example(i, seed=0)[1]],)
                         for i in range(3)), tmp_path / "train", source="synthetic")
    recorded = json.loads((data / "manifest.json").read_text())["sha256"]
    (data / ".snakemake_timestamp").write_text("")
    assert verified_checksum(data) == recorded
    (data / "train.jsonl").write_text((data / "train.jsonl").read_text().replace("\n", "\n\n", 1))
    with pytest.raises(TrainDataError, match="differs from manifest.json"):
        verified_checksum(data)
