"""The failure policy of training jobs (docs/cluster.md, "Failure policy"): save and stop before the Slurm time
limit or on SIGUSR1 (exit 75, the rerun resumes from that checkpoint), a failure the same inputs repeat is recorded
and a retry of it exits at once, and one writer per work folder (a live holder refuses, a stale lock is taken
over). The same path through Snakemake's SLURM profile and a real time limit: tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vppo.cli import main as vppo_main
from vppo.training import exits, work_lock
from vppo.training.time_limit import SaveBeforeTimeLimit, parse_time_left



# ------------------------------------------------------------------ save and stop before the time limit

def test_squeue_time_left_is_parsed():
    assert parse_time_left("1-02:03:04\n") == 93784 and parse_time_left("59:30") == 3570
    assert parse_time_left("2:00:00") == 7200 and parse_time_left("UNLIMITED") is None


def _boundaries(stop: SaveBeforeTimeLimit, clock: list[float], steps: list[tuple[int, float]], max_steps=100):
    """Drive the callback through (global_step, clock) step ends; returns the step where it stopped, or None."""
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    stop.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=max_steps), control)
    for step, now in steps:
        clock[0] = now
        stop.on_step_end(None, SimpleNamespace(global_step=step, max_steps=max_steps), control)
        if control.should_training_stop:
            assert control.should_save
            return step
    return None


def test_stops_at_the_last_rollout_boundary_that_leaves_the_margin():
    clock, asked = [0.0], []
    left = {"s": 1000.0}

    def time_left():
        asked.append(clock[0])
        return left["s"] - clock[0], left["s"]

    def agree(flag):
        return flag

    # 3 updates per rollout of 100 s each; margin 300 s: after the rollout ending at 600 s, 400 s are left,
    # under 300 + the longest rollout (300): stop there, never inside a rollout.
    stop = SaveBeforeTimeLimit(agree, True, 3, 300.0, time_left, clock=lambda: clock[0])
    steps = [(n, 100.0 * n) for n in range(1, 10)]
    assert _boundaries(stop, clock, steps) == 6 and stop.reason == "the Slurm time limit is near"
    assert asked == [0.0, 600.0]  # once at the start, once again before stopping
    # the limit was extended meanwhile (scontrol update): it goes on
    left["s"], clock[0] = 1000.0, 0.0
    stop = SaveBeforeTimeLimit(agree, True, 3, 300.0, time_left, clock=lambda: clock[0])
    stop.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=100), SimpleNamespace())
    left["s"] = 5000.0
    assert _boundaries(stop, clock, steps[:8]) is None
    # a rank that is not rank 0 follows the all-reduce; without a margin only a signal stops
    follower = SaveBeforeTimeLimit(lambda flag: True, False, 3, 300.0, time_left, clock=lambda: clock[0])
    assert _boundaries(follower, clock, steps) == 3 and follower.reason == "another rank asked"
    assert _boundaries(SaveBeforeTimeLimit(agree, True, 1, None, time_left, clock=lambda: clock[0]), clock,
                       steps) is None
    # a margin as long as the job's whole limit is cut to half of it: a short job still trains
    left["s"], clock[0] = 1000.0, 0.0
    short = SaveBeforeTimeLimit(agree, True, 1, 5000.0, time_left, clock=lambda: clock[0])
    assert _boundaries(short, clock, [(n, 100.0 * n) for n in range(1, 10)]) == 5 and short.margin_s == 500


# ------------------------------------------------------------------ one writer per work folder

def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _lock_of(pid: int, **fields) -> dict:
    import socket

    return {"token": "other", "host": socket.gethostname(), "pid": pid,
            "pid_started": work_lock.process_start_time(pid), "since": "earlier", **fields}


def test_a_live_holder_refuses_a_second_writer_and_a_stale_lock_is_taken_over(tmp_path):
    lock = tmp_path / work_lock.LOCK_FILE
    holder = _sleeper()
    try:
        lock.write_text(json.dumps(_lock_of(holder.pid)))
        with pytest.raises(work_lock.WorkDirBusy, match=f"pid {holder.pid} on .*delete {lock}"):
            work_lock.acquire(tmp_path, {})
        assert json.loads(lock.read_text())["token"] == "other"  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()
    token = work_lock.acquire(tmp_path, {})  # its process is gone: stale
    mine = json.loads(lock.read_text())
    assert mine["token"] == token and mine["pid"] == os.getpid() and mine["slurm_job_id"] is None
    work_lock.release(tmp_path, "not-mine")
    assert lock.exists()
    work_lock.release(tmp_path, token)
    assert not lock.exists()


@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    """squeue on PATH answering from a dict: job id -> state, or absent (Slurm no longer knows it)."""
    states = {}
    table = tmp_path / "states.json"
    script = tmp_path / "bin" / "squeue"
    script.parent.mkdir()
    script.write_text(f"""#!{sys.executable}
import json, sys
states = json.load(open({str(table)!r}))
job = sys.argv[sys.argv.index("-j") + 1]
if job not in states:
    sys.exit("slurm_load_jobs error: Invalid job id specified")
print(states[job])
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")

    def set_states(**new):
        states.clear()
        states.update(new)
        table.write_text(json.dumps(states))
    set_states()
    return set_states


def test_a_slurm_holder_is_judged_by_its_job(tmp_path, fake_squeue):
    work = tmp_path / "work"
    work.mkdir()
    lock = work / work_lock.LOCK_FILE
    remote = {"token": "other", "host": "gpu17", "pid": 4242, "slurm_job_id": "901", "since": "earlier"}
    lock.write_text(json.dumps(remote))
    fake_squeue(**{"901": "RUNNING"})
    with pytest.raises(work_lock.WorkDirBusy, match="pid 4242 on gpu17, Slurm job 901"):
        work_lock.acquire(work, {"SLURM_JOB_ID": "902"})
    # Slurm requeued this very job: its earlier run is gone
    work_lock.release(work, work_lock.acquire(work, {"SLURM_JOB_ID": "901"}))
    lock.write_text(json.dumps(remote))
    fake_squeue(**{"901": "FAILED"})
    work_lock.release(work, work_lock.acquire(work, {"SLURM_JOB_ID": "902"}))
    lock.write_text(json.dumps(remote))
    fake_squeue()  # purged: squeue says invalid job id
    token = work_lock.acquire(work, {"SLURM_JOB_ID": "902"})
    assert json.loads(lock.read_text())["slurm_job_id"] == "902"
    work_lock.release(work, token)
    # another host without a job id: this host cannot tell, so it does not take over
    lock.write_text(json.dumps({**remote, "slurm_job_id": None}))
    with pytest.raises(work_lock.WorkDirBusy, match="cannot tell whether it still runs"):
        work_lock.acquire(work, {})


def test_the_launcher_holds_the_lock_for_every_rank(tmp_path):
    token = work_lock.acquire(tmp_path, {})
    with work_lock.holding(tmp_path, {work_lock.TOKEN_ENV: token}) as held:  # a rank under the launcher
        assert held is None
    with work_lock.holding(tmp_path, {"RANK": "3"}) as held:  # a rank > 0 of a hand-started accelerate launch
        assert held is None
    with pytest.raises(work_lock.WorkDirBusy):  # a second writer, even in this same process
        with work_lock.holding(tmp_path, {}):
            pass
    work_lock.release(tmp_path, token)
    with work_lock.holding(tmp_path, {}) as held:
        assert json.loads((tmp_path / work_lock.LOCK_FILE).read_text())["token"] == held
    assert not (tmp_path / work_lock.LOCK_FILE).exists()


# ------------------------------------------------------------------ failures a retry would repeat

def _train_args(tmp_path, model, data, *extra):
    return ["train", "--model", str(model), "--data", str(data), "--recipe", "smoke", "--method", "grpo",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *extra]


def test_bad_input_is_recorded_and_its_retry_exits_at_once(tmp_path, capsys):
    """Bad input met once training starts (here an empty checkpoint folder) is recorded with the inputs'
    fingerprint; a bad recipe key is refused before anything is written (its check takes seconds, not a load)."""
    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    data.mkdir()
    assert vppo_main(_train_args(tmp_path, model, data, "--set", "micro_batch_responses=3")) == 2
    first = capsys.readouterr().err.strip()
    assert "micro_batch_responses" in first and len(first.splitlines()) == 1
    assert not (tmp_path / "work").exists()
    bad = _train_args(tmp_path, model, data)
    assert vppo_main(bad) == 2
    first = capsys.readouterr().err.strip()
    assert str(model) in first and len(first.splitlines()) == 1
    outcome = exits.read(tmp_path / "work")
    assert outcome["kind"] == "bad_input" and outcome["retry"] is False
    assert vppo_main(bad) == 2  # the retry: the recorded line, nothing loaded
    again = capsys.readouterr().err.strip()
    assert again.startswith("vppo train: not retried: ") and str(model) in again
    assert str(tmp_path / "work" / exits.EXIT_FILE) in again and len(again.splitlines()) == 1
    # a changed config is a new attempt (here still a bad one, reported as itself)
    assert vppo_main(_train_args(tmp_path, model, data, "--set", "learning_rate=2e-6")) == 2
    assert "not retried" not in capsys.readouterr().err
    assert not (tmp_path / "work" / work_lock.LOCK_FILE).exists()


def test_out_of_memory_stops_with_what_to_change(tmp_path, capsys, monkeypatch):
    import torch

    import vppo.training.runner as runner

    calls = []

    def allocate_too_much(request, **_):
        calls.append(request)
        torch.empty(1 << 62, dtype=torch.uint8)  # the allocator's own error

    monkeypatch.setattr(runner, "run_training", allocate_too_much)
    model, data = tmp_path / "model", tmp_path / "data"
    model.mkdir()
    data.mkdir()
    args = _train_args(tmp_path, model, data)
    assert vppo_main(args) == exits.EXIT_OUT_OF_MEMORY
    line = capsys.readouterr().err.strip()
    assert line.startswith("vppo train: out of memory") and "lower micro_batch_responses (now 4" in line
    assert vppo_main(args) == exits.EXIT_OUT_OF_MEMORY and len(calls) == 1
    assert "not retried: out of memory" in capsys.readouterr().err
    # The same job moved to a partition with larger GPUs (or given more memory) is a new attempt.
    monkeypatch.setenv("SLURM_JOB_PARTITION", "h200")
    assert vppo_main(args) == exits.EXIT_OUT_OF_MEMORY and len(calls) == 2
    assert "not retried" not in capsys.readouterr().err
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "512000")
    assert vppo_main(args) == exits.EXIT_OUT_OF_MEMORY and len(calls) == 3
    assert vppo_main(args) == exits.EXIT_OUT_OF_MEMORY and len(calls) == 3  # and that one is not repeated either
    capsys.readouterr()
    # A resumable stop or a kill (no record: a node failure, a preemption) never blocks the next attempt.
    exits.record(tmp_path / "work", "saved_before_limit", "stopped at step 2", None)
    monkeypatch.setattr(runner, "run_training", lambda request, **_: calls.append(request) or request.out)
    assert vppo_main(args) == 0 and len(calls) == 4
    assert exits.read(tmp_path / "work") is None


# ------------------------------------------------------------------ SIGUSR1 during a real training run

@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_and_the_rerun_resumes_from_it(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """`vppo train` gets a real SIGUSR1 (sent to itself at the end of step 1, so the test does not depend on timing)
    and ends with exit 75 after saving that step; the rerun resumes from it."""
    from transformers import TrainerCallback

    import vppo.training.runner as runner
    from vppo.data.train_data import prepare_train_data

    class SignalAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                holder = json.loads((work / work_lock.LOCK_FILE).read_text())
                assert holder["pid"] == os.getpid()  # held for the whole run
                os.kill(os.getpid(), signal.SIGUSR1)

    build = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer", lambda request, recipe, reward=None, callbacks=None, preset=None:
                        build(request, recipe, reward, [*(callbacks or []), SignalAtStep()], preset))
    data = prepare_train_data("synthetic", tmp_path / "data", n_rows=16)
    work = tmp_path / "work"
    # no periodic checkpoint (save_steps 1000): any checkpoint is the signal's
    args = _train_args(tmp_path, tiny_model_dir, data, "--set", "save_steps=1000")
    assert vppo_main([*args, "--max-steps", "60"]) == exits.EXIT_RESUMABLE
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-1"]
    assert f"vppo train: stopped at step 1 (SIGUSR1) after saving {work / 'checkpoint-1'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (work / work_lock.LOCK_FILE).exists()
    assert exits.read(work)["retry"] is True
    monkeypatch.setattr(runner, "build_trainer", build)
    assert vppo_main([*args, "--max-steps", "2"]) == 0
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(work / "checkpoint-1") and summary["steps"] == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler lives only as long as the run
