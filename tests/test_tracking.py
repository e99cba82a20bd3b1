"""Issue 24: a 2-step smoke run's curves in TensorBoard event files (read back with TensorBoard's own reader), the
converted checkpoint's model card (parsed by huggingface_hub), and `vppo status` on a partly finished default
run with one training job running, then killed."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback

from doubles.reporting_inputs import write_eval_result
from vppo.catalog import PAPER_AVG
from vppo.cli import main
from vppo.fileio import write_json_atomic
from vppo.reward import Grade
from vppo.training.metrics import read_log
from vppo.training.rewards import GradingReward
from vppo.training.runner import TrainRequest, run_training
from vppo.training.tracking import PROGRESS_FILE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BASE_ID = "Qwen/Qwen2.5-VL-7B-Instruct"


def steered_grade(response: str, answer: str) -> Grade:
    """About half the groups mixed (as tests/test_training.py): TGF, TAS and filtering all have work."""
    return Grade(accuracy=float(answer in ("1", "2") and zlib.crc32(response.encode()) % 2 == 1), format=0.0,
                 extracted=None)


@contextmanager
def no_network():
    """Any internet connection this process opens fails the test."""
    connect = socket.socket.connect

    def refuse(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network call to {address} during an offline run")
        return connect(self, address, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, tiny_model_dir):
    """A checkout's layout after `vppo train` of tiny/vppo (2 steps, in this process, no network allowed) and
    `vppo convert` of it: what the default run's rules write for one cell."""
    from vppo.data.train_data import prepare_train_data

    root = tmp_path_factory.mktemp("checkout")
    (root / "workflow" / "config").mkdir(parents=True)
    shutil.copy(ROOT / "workflow" / "config" / "default.yaml", root / "workflow" / "config" / "default.yaml")
    data = prepare_train_data("synthetic", root / "resources" / "data" / "train", n_rows=16)
    request = TrainRequest(model=tiny_model_dir, data=data, recipe="smoke", method="vppo",
                           work_dir=root / "work/train/tiny/vppo", out=root / "results/train/tiny/vppo",
                           max_steps=2, run_name="tiny/vppo/seed0")

    with no_network():
        run_training(request, reward=GradingReward(steered_grade))
    assert main(["convert", str(request.out), "--out", str(root / "results/checkpoints/tiny/vppo"),
                 "--base", str(tiny_model_dir), "--base-id", BASE_ID]) == 0
    return root


def test_event_files_hold_every_logged_metric_at_its_step(checkout):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = json.loads((checkout / "results/train/tiny/vppo/train_summary.json").read_text())
    folder = Path(summary["tracking"]["tensorboard_dir"])
    assert folder == checkout / "work/train/tiny/vppo/tensorboard/tiny/vppo/seed0"
    assert summary["tracking"]["report_to"] == ["tensorboard"]
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    log = read_log(checkout / "results/train/tiny/vppo/training_log.jsonl")
    assert [line["step"] for line in log] == [1, 2]
    compared = set()
    for line in log:
        for key, value in line.items():
            if key == "step" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            points = {e.step: e.value for e in events.Scalars(f"train/{key}")}
            assert points[line["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), key  # float32 in the file
            compared.add(key)
    for key in ("reward", "entropy", "completions/mean_length", "kept_token_fraction", "alpha_mean", "alpha_min",
                "alpha_max", "dependency_kept_mean", "dependency_dropped_mean", "skipped_updates", "filtered_groups"):
        assert key in compared, key
    assert events.Tensors("train/dependency_estimator/text_summary")  # names go in as text


def write_scores(checkout: Path) -> Path:
    """Result files of the converted tiny/vppo checkpoint's eight cells, and one of another checkpoint's."""
    converted, eval_root = checkout / "results/checkpoints/tiny/vppo", checkout / "results/eval"
    sha256 = json.loads((converted / "vppo_convert.json").read_text())["checkpoint_sha256"]
    for i, benchmark in enumerate(PAPER_AVG):
        write_eval_result(eval_root, "tiny", "vppo", benchmark, 40.0 + i, 2.0, checkpoint_sha256=sha256,
                          checkpoint=str(converted))
    # another checkpoint's result, recorded (as vppo eval does) with an absolute path: the double's default is
    # relative, and in a checkout where the README's main command ran it named that run's real converted folder
    write_eval_result(eval_root, "tiny", "dapo", "geo3k", 99.0, 1.0,
                      checkpoint=str(checkout / "results/checkpoints/tiny/dapo"))
    return eval_root


def test_converted_checkpoint_has_a_valid_model_card_that_takes_its_scores(checkout):
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    converted = checkout / "results/checkpoints/tiny/vppo"
    card = ModelCard.load(converted / "README.md")
    meta = card.data.to_dict()
    validate_repo_id(meta["base_model"])
    assert meta["base_model"] == BASE_ID and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-text-to-text" and "vppo" in meta["tags"] and "qwen2.5-vl" in meta["tags"]
    record = json.loads((converted / "vppo_convert.json").read_text())
    data_sha = json.loads((checkout / "results/train/tiny/vppo/train_summary.json").read_text())["data"]["sha256"]
    commit = json.loads((checkout / "results/train/tiny/vppo/train_summary.json").read_text())["harness_commit"]
    assert commit == record["card"]["trained_at_commit"] and (commit is None) == (not (ROOT / ".git").exists())
    for fact in ("`vppo`", "`smoke`", data_sha, f"trained at commit `{commit}`", "tiny/vppo/seed0"):
        assert fact in card.text, fact
    assert "Not evaluated yet" in card.text and "model-index" not in meta

    eval_root = write_scores(checkout)
    assert main(["card", str(converted), "--eval-root", str(eval_root)]) == 0
    card = ModelCard.load(converted / "README.md")
    scores = {r.dataset_type: r.metric_value for r in card.data.eval_results}
    assert scores == {b: 40.0 + i for i, b in enumerate(PAPER_AVG)}
    assert f"| **Avg** (paper's eight) | {40 + 3.5:.1f} | {math.sqrt(8 * 4) / 8:.1f} |" in card.text
    assert "99.0" not in card.text
    # A record converted before cards named the family: `vppo card` reads it from the checkpoint's config.
    marker = converted / "vppo_convert.json"
    record = json.loads(marker.read_text())
    record["card"].pop("family")
    marker.write_text(json.dumps(record))
    assert main(["card", str(converted), "--eval-root", str(eval_root)]) == 0
    assert "qwen2.5-vl" in ModelCard.load(converted / "README.md").data.tags

    empty = checkout / "empty"
    empty.mkdir()
    assert main(["report", "--tables", str(empty), "--figures", str(empty), "--eval-root", str(eval_root),
                 "--out", str(checkout / "report.html")]) == 0
    rows = [row for row in (checkout / "report.html").read_text().split("<tr>") if ">geo3k</td>" in row]
    assert len(rows) == 2  # each cell's provenance row: the converted checkpoint's names its run and its card
    ours, other = sorted(rows, key=lambda row: "dapo" in row)
    assert "tiny/vppo/seed0" in ours and str(converted / "README.md") in ours
    assert "seed0" not in other and "README.md" not in other


def status_of(root: Path, capsys) -> dict:
    assert main(["status", "--root", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    return {r["method"]: r for r in status["cells"]} | {"_": status}


def test_status_of_a_partly_finished_default_run_with_a_running_then_killed_job(checkout, tiny_model_dir, capsys):
    write_scores(checkout)
    work = checkout / "work/train/tiny/grpo"
    command = [sys.executable, "-m", "vppo", "train", "--model", str(tiny_model_dir), "--data",
               str(checkout / "resources/data/train"), "--recipe", "smoke", "--method", "grpo", "--work-dir", str(work),
               "--out", str(checkout / "results/train/tiny/grpo"), "--max-steps", "60", "--run-name", "tiny/grpo/seed0"]
    job = subprocess.Popen(command, cwd=checkout, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            if (work / PROGRESS_FILE).is_file() and json.loads((work / PROGRESS_FILE).read_text())["step"] >= 2:
                break
            time.sleep(0.2)
        assert job.poll() is None, "the training job ended before it was observed"
        running = status_of(checkout, capsys)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # as a preempted node would
        job.wait()
    killed = status_of(checkout, capsys)

    vppo, grpo = running["vppo"], running["grpo"]
    assert vppo["train"]["state"] == "done" and vppo["train"]["step"] == 2 and vppo["convert"]["state"] == "done"
    assert vppo["eval"] == {"state": "done", "done": 8, "total": 8}
    assert grpo["train"]["state"] == "running" and grpo["train"]["max_steps"] == 60
    assert 2 <= grpo["train"]["step"] < 60 and grpo["train"]["eta_s"] > 0 and grpo["train"]["elapsed_s"] > 0
    assert grpo["train"]["reward"] is not None and grpo["convert"]["state"] == "waiting"
    assert grpo["train"]["holder"].startswith(f"pid {job.pid} on ")  # `vppo train` without the launcher: its lock
    assert running["dapo"]["train"]["state"] == "waiting" and running["base"]["train"] is None
    assert running["dapo"]["eval"] == {"state": "waiting", "done": 1, "total": 8}
    assert running["base"]["eval"]["state"] == "waiting"
    assert running["_"]["counts"]["train"] == {"done": 1, "running": 1, "failed": 0, "waiting": 4}

    assert killed["grpo"]["train"]["state"] == "failed" and killed["grpo"]["train"]["step"] >= 2
    # the kill may land inside a save: a partial checkpoint is not resumable, and status must not name it
    from vppo.training.checkpoints import last_complete_checkpoint

    resumable = last_complete_checkpoint(work)
    expected = f"a rerun resumes from {resumable.name}" if resumable else "a rerun starts again (no checkpoint yet)"
    assert killed["grpo"]["train"]["note"].endswith(expected)
    assert killed["_"]["counts"]["train"] == {"done": 1, "running": 0, "failed": 1, "waiting": 4}
    assert killed["_"]["gpu_hours"]["spent"] == 0.0  # the default run is CPU only

    # The trainer gone quiet while the job's launcher still holds the work folder (a rank stuck in a collective, or
    # the launcher between attempts): running, with a note, not failed. Here this test process takes the lock as
    # a launcher would (the killed trainer's lock is stale: its pid is gone).
    from vppo.training.work_lock import acquire, release

    token = acquire(work, {})
    stuck = status_of(checkout, capsys)["grpo"]["train"]
    assert stuck["state"] == "running" and "stuck?" in stuck["note"] and f"pid {os.getpid()} on " in stuck["note"]
    release(work, token)
    assert status_of(checkout, capsys)["grpo"]["train"]["state"] == "failed"

    assert main(["status", "--root", str(checkout)]) == 0
    text = capsys.readouterr().out
    assert "failed" in text and "GPU-hours" in text and len(text.splitlines()) < 25  # one screen


def test_an_unknown_tracker_is_a_one_line_error(capsys, tmp_path):
    code = main(["train", "--model", str(tmp_path), "--data", str(tmp_path), "--recipe", "smoke", "--method", "grpo",
                 "--work-dir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                 "--set", "report_to=tensorboard,mlflow"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "report_to" in err and "mlflow" in err


def test_gpu_hours_spent_and_ahead_on_a_gpu_configuration(tmp_path):
    """8-GPU training (the 7b recipe's layout, 100 steps): dapo finished (its benchmark file says one hour), grpo
    running in this process (10 s per step, step 10), vppo waiting; evaluation on 1 GPU, one job per cell."""
    from vppo.reporting.status import collect

    config = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())
    config["models"] = {"big": {"base": "tiny-warm", "recipe": "7b", "methods": ["base", "dapo", "grpo", "vppo"],
                                "eval_resources": {"gpus": 1, "runtime": 60}}}
    config["train"]["max_steps"] = 100
    config["eval"]["group_benchmarks"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    now = time.time()
    write_json_atomic(tmp_path / "results/train/big/dapo/train_summary.json",
                      {"steps": 100, "max_steps": 100, "wall_time_s": 1000.0,
                       "tracking": {"run_name": "big/dapo/seed0"}})
    (tmp_path / "logs/benchmarks/train/big").mkdir(parents=True)
    (tmp_path / "logs/benchmarks/train/big/dapo.tsv").write_text(  # Snakemake's benchmark: columns
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "3600.0\t1:00:00\t1000\t2000\t900\t950\t1\t2\t50\t3500\n")
    write_json_atomic(tmp_path / "work/train/big/grpo" / PROGRESS_FILE, {
        "run_name": "big/grpo/seed0", "host": socket.gethostname(), "pid": os.getpid(), "started": now - 200,
        "training_since": now - 100, "start_step": 0, "step": 10, "max_steps": 100, "updated": now, "reward": 0.25,
        "phase": "training"})

    status = collect(tmp_path, {}, tmp_path / "c.yaml")
    rows = {r["method"]: r for r in status["cells"]}
    grpo = rows["grpo"]["train"]
    assert grpo["state"] == "running" and grpo["eta_s"] == pytest.approx(900, rel=1e-3)
    assert rows["vppo"]["train"] == {"state": "waiting", "step": 0, "max_steps": 100}
    hours = status["gpu_hours"]
    assert hours["spent_finished_jobs"] == pytest.approx(8.0)
    assert hours["spent_running_training"] == pytest.approx(200 * 8 / 3600, rel=1e-3)
    # ahead: grpo's 90 steps and vppo's 100 at 10 s on 8 GPUs, then 4 methods x 8 cells x 1 h x 1 GPU
    assert hours["ahead"] == pytest.approx((90 + 100) * 10 * 8 / 3600 + 32, rel=1e-3)
    assert sorted(hours["ahead_from_configured_runtime"]) == [f"eval/big/{m}" for m in ("base", "dapo", "grpo", "vppo")]


class CrashAt(TrainerCallback):
    """Dies at the end of optimizer step ``step``, before it is logged or saved: the step before is logged but
    not in a checkpoint (the smoke recipe saves every 2 steps)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated kill")


def test_a_resumed_run_shows_each_step_once_in_tensorboard(checkout, tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    request = TrainRequest(model=tiny_model_dir, data=checkout / "resources/data/train", recipe="smoke",
                           method="grpo", work_dir=tmp_path / "work", out=tmp_path / "out", max_steps=4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_training(request, callbacks=[CrashAt(4)], reward=GradingReward(steered_grade))
    assert [line["step"] for line in read_log(request.work_dir / "training_log.jsonl")] == [1, 2, 3]
    run_training(request, reward=GradingReward(steered_grade))  # resumes from checkpoint-2: logs step 3 again
    folder = request.work_dir / "tensorboard" / f"{tiny_model_dir.name}/grpo/seed0"  # the default run name
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    log = read_log(request.out / "training_log.jsonl")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (line["step"], pytest.approx(line["loss"], rel=1e-6, abs=1e-7)) for line in log]


def test_wandb_offline_writes_its_run_under_the_work_folder_without_network(checkout, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    import vppo.training.tracking as tracking

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setattr(tracking, "USER_SET_DIRS", set())
    request = TrainRequest(model=tiny_model_dir, data=checkout / "resources/data/train", recipe="smoke",
                           method="grpo", work_dir=tmp_path / "work", out=tmp_path / "out", max_steps=1,
                           overrides={"report_to": "wandb"}, run_name="tiny/grpo/seed0")
    with no_network():
        run_training(request, reward=GradingReward(steered_grade))
    (run,) = (request.work_dir / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")) and not (request.work_dir / "tensorboard").exists()
    summary = json.loads((request.out / "train_summary.json").read_text())
    assert summary["tracking"] == {"report_to": ["wandb"], "run_name": "tiny/grpo/seed0", "tensorboard_dir": None}


def test_the_tracker_is_not_part_of_what_a_work_folder_resumes(tiny_model_dir, tmp_path):
    from vppo.training.recipes import load_recipe, method_preset
    from vppo.training.runner import TrainError, _claim_work_dir

    def claim(**overrides):
        recipe = load_recipe("smoke", overrides)
        request = TrainRequest(model=tiny_model_dir, data=tmp_path, recipe="smoke", method="grpo",
                               work_dir=tmp_path, out=tmp_path / "out", overrides=overrides)
        _claim_work_dir(tmp_path, request, recipe, method_preset("grpo", recipe), "data-sha", write=True)

    claim()
    claim(report_to="wandb,trackio")  # another tracker: the same training, so it resumes
    with pytest.raises(TrainError, match="different recipe"):
        claim(learning_rate=1e-3)
