"""``vppo status [--config preset=NAME | --configfile FILE] [--json]``: where a reproduction in this checkout stands.

For every configured (model, method): its training, conversion and evaluation, each ``done``, ``running``,
``failed`` or ``waiting``; for a training job its step / total, last reward, elapsed time and ETA; then the
GPU-hours spent so far and still ahead. It reads only what the jobs write, so it answers during a run and
after a crash, without Snakemake:

- training: ``results/train/<model>/<method>/train_summary.json`` (done); ``work/train/<model>/<method>/``
  ``vppo_progress.json`` (:mod:`vppo.training.tracking`): running while its process lives (same host: the
  process id; another host, e.g. a cluster node: the file was written within :data:`STALE_AFTER_S` or five
  step times), else failed at its last step, as is a job that left a log or checkpoints but no progress file;
  a job whose progress stopped while its launcher still holds the work folder's lock (``vppo_train.lock``: a live
  Slurm job, or a live process on this host) is running, with a note asking whether it hangs;
- conversion: ``results/checkpoints/<model>/<method>/vppo_convert.json``; evaluation: the cells' result files;
  either is running while Snakemake marks its output incomplete (``.snakemake/incomplete``) and a Snakemake
  driver lives in the checkout (:func:`snakemake_running`), failed when its output is marked but no driver
  lives or when its log exists without the output;
- GPU-hours spent: the ``benchmark:`` files of finished jobs (:mod:`vppo.reporting.cost`, as the report sums
  them) plus the elapsed time of running training jobs; ahead: each unfinished training job's remaining steps at
  its measured step time (this run's, else another run's of the model), else its configured runtime (the
  job shapes of docs/cluster.md), and each unfinished evaluation job at the model's measured or configured time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import time
from pathlib import Path

import yaml

from vppo.catalog import UNTRAINED_METHODS
from vppo.errors import InputError, parse_key_values
from vppo.reporting import cost as cost_mod
from vppo.training.tracking import PROGRESS_FILE

#: a progress file from another host older than this (and five step times) belongs to a dead job
STALE_AFTER_S = 900
STATES = ("done", "running", "failed", "waiting")


def load_config(root: Path, overrides: dict, configfile: Path | None = None) -> tuple[str, dict]:
    """The run's configuration: ``--configfile`` when given (as for Snakemake, it is the whole configuration),
    else the preset's file (``--config preset=NAME``; default: default)."""
    unknown = sorted(set(overrides) - {"preset"})
    if unknown:
        raise InputError(f"--config: only preset=NAME is read here (got {', '.join(unknown)})")
    preset = str(overrides.get("preset", "default"))
    path = Path(configfile) if configfile else root / "workflow" / "config" / f"{preset}.yaml"
    if not path.is_file():
        raise InputError(f"{'--configfile' if configfile else f'--config preset={preset}:'} {path}: no such file")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("models"), dict):
        raise InputError(f"{path}: field 'models': missing (not a workflow configuration)")
    return str(config.get("preset", preset)), config


def _alive(progress: dict, now: float) -> bool:
    if progress.get("host") == socket.gethostname():
        try:
            os.kill(int(progress["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's live process
        return True
    step_s = _step_seconds(progress) or 0.0
    return now - float(progress.get("updated", 0)) < max(STALE_AFTER_S, 5 * step_s)


def _step_seconds(progress: dict) -> float | None:
    """Measured seconds per step of the process that wrote ``progress`` (None before its first step)."""
    steps = int(progress.get("step") or 0) - int(progress.get("start_step") or 0)
    since = progress.get("training_since")
    return (float(progress["updated"]) - float(since)) / steps if since and steps > 0 else None


def snakemake_running(root: Path) -> bool:
    """Whether a Snakemake driver works in ``root``: on Linux, a live process running snakemake with ``root`` as its
    working directory; elsewhere, whether Snakemake's lock is there (a killed driver leaves it: "running" then
    means "running or killed")."""
    proc, target = Path("/proc"), str(Path(root).resolve())
    if not proc.is_dir():
        locks = Path(root) / ".snakemake" / "locks"
        return locks.is_dir() and any(locks.iterdir())
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:3]
            if any(os.path.basename(arg) == "snakemake" for arg in argv) and os.readlink(entry / "cwd") == target:
                return True
        except OSError:  # gone meanwhile, or another user's
            continue
    return False


class Checkout:
    """The files of one checkout that say how far its jobs are."""

    def __init__(self, root: Path):
        self.root = root
        incomplete = root / ".snakemake" / "incomplete"
        self.incomplete = {self._decode(p.relative_to(incomplete)) for p in incomplete.rglob("*") if p.is_file()} \
            if incomplete.is_dir() else set()
        self.snakemake_live = snakemake_running(root)

    @staticmethod
    def _decode(relative: Path) -> str:
        """Snakemake's incomplete marker name: the output path, urlsafe base64, split into '@'-prefixed parts."""
        try:
            return base64.urlsafe_b64decode("".join(part.lstrip("@") for part in relative.parts)).decode()
        except (ValueError, UnicodeDecodeError):
            return ""

    def job_state(self, outputs: list[str], log: str) -> str:
        """done / running / failed / waiting of a Snakemake job from its outputs, markers, driver and log."""
        if all((self.root / o).exists() for o in outputs) and not self.incomplete & set(outputs):
            return "done"
        if self.incomplete & set(outputs):
            return "running" if self.snakemake_live else "failed"
        return "failed" if (self.root / log).is_file() else "waiting"


def train_status(checkout: Checkout, model: str, method: str, total: int | None, now: float) -> dict:
    out, work = checkout.root / "results/train" / model / method, checkout.root / "work/train" / model / method
    progress_path = work / PROGRESS_FILE
    progress = json.loads(progress_path.read_text()) if progress_path.is_file() else None
    if (out / "train_summary.json").is_file():
        summary = json.loads((out / "train_summary.json").read_text())
        return {"state": "done", "step": summary["steps"], "max_steps": summary["max_steps"],
                "wall_s": summary["wall_time_s"], "step_s": summary["wall_time_s"] / max(summary["steps"], 1),
                "run_name": (summary.get("tracking") or {}).get("run_name")}
    if progress is None:
        started = (checkout.root / "logs/train" / model / f"{method}.log").is_file() or any(work.glob("checkpoint-*"))
        return {"state": "failed" if started else "waiting", "step": 0, "max_steps": total}
    step, steps = int(progress["step"]), progress.get("max_steps") or total
    status = {"step": step, "max_steps": steps, "reward": progress.get("reward"), "run_name": progress["run_name"],
              "step_s": _step_seconds(progress), "elapsed_s": now - float(progress["started"])}
    from vppo.training.work_lock import describe, holder_alive, holder_of

    lock = holder_of(work)  # the launcher of the job that trains there (vppo.training.work_lock)
    holder = describe(lock) if lock else None
    if holder:
        status["holder"] = holder
    if _alive(progress, now):
        status["state"] = "running"
        if status["step_s"] and steps:
            status["eta_s"] = status["step_s"] * (steps - step)
    elif checkout.snakemake_live and f"results/train/{model}/{method}" in checkout.incomplete:
        status["state"] = "running"  # a new attempt Snakemake started, still loading before its first progress file
        status["note"] = "a new attempt is starting"
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(progress["updated"]))
        # True / False / None (this host cannot tell, e.g. no squeue); asked only here, not for every live job
        alive = holder_alive(lock, socket.gethostname(), None) if lock else False
        if alive:  # the job lives but its rank 0 stopped reporting: hung (a collective?) or between attempts
            status["state"] = "running"
            status["note"] = (f"no progress since {since}, but the job that holds its work folder still runs "
                              f"({holder}): stuck? its log: logs/train/{model}/{method}.log")
            return status
        from vppo.training.checkpoints import last_complete_checkpoint

        checkpoint = last_complete_checkpoint(work)
        status["state"] = "failed"
        status["note"] = (f"no process since {since} (pid {progress['pid']} on {progress['host']}); a rerun "
                          + (f"resumes from {checkpoint.name}" if checkpoint else "starts again (no checkpoint yet)"))
        if alive is None:
            status["note"] += f"; its work folder's lock names {holder}, which this host cannot see"
    return status


def cell_status(checkout: Checkout, config: dict, model: str, method: str, now: float) -> dict:
    from vppo.training.recipes import load_recipe

    spec, benchmarks = config["models"][model], config["benchmarks"]
    trained = method not in UNTRAINED_METHODS and method not in (spec.get("released") or {})
    row = {"model": model, "method": method, "train": None, "convert": None}
    if trained:
        train = config.get("train") or {}
        recipe = load_recipe(spec["recipe"], train.get("set") or {}, train.get("max_steps"))
        row["gpus"] = recipe.num_nodes * recipe.gpus_per_node
        row["train"] = train_status(checkout, model, method, recipe.max_steps, now)
        row["convert"] = {"state": checkout.job_state([f"results/checkpoints/{model}/{method}/vppo_convert.json"],
                                                      f"logs/convert/{model}/{method}.log")}
    grouped = (config.get("eval") or {}).get("group_benchmarks", False)

    def eval_log(benchmark: str) -> str:  # one job per (model, method) when grouped, else one per cell
        return f"logs/eval/{model}/{method}.log" if grouped else f"logs/eval/{model}/{method}/{benchmark}.log"

    states = [checkout.job_state([f"results/eval/{model}/{method}/{b}.json"], eval_log(b)) for b in benchmarks]
    done = states.count("done")
    state = next((s for s in ("running", "failed") if s in states), "done" if done == len(states) else "waiting")
    row["eval"] = {"state": state, "done": done, "total": len(states)}
    return row


def gpu_hours(checkout: Checkout, config: dict, rows: list[dict]) -> dict:
    """Spent (benchmark files + running training) and ahead (unfinished training and evaluation), in GPU-hours."""
    eval_gpus = {m: (s.get("eval_resources") or {}).get("gpus", 0) for m, s in config["models"].items()}
    train_gpus = {r["model"]: r["gpus"] for r in rows if "gpus" in r}
    mapping = {"*": 0, **{f"train/{m}": g for m, g in train_gpus.items()},
               **{f"eval/{m}": g for m, g in eval_gpus.items()}}
    root = checkout.root / "logs" / "benchmarks"
    costs = cost_mod.load_costs(root, mapping) if root.is_dir() else None
    finished = float(costs["gpu_hours"].sum()) if costs is not None and len(costs) else 0.0
    running = sum(r["train"].get("elapsed_s", 0) * r["gpus"] / 3600 for r in rows
                  if r["train"] and r["train"]["state"] == "running")
    ahead, estimated = 0.0, []
    for r in rows:
        train = r["train"]
        if train and train["state"] != "done":
            measured = train.get("step_s") or _model_step_seconds(rows, r["model"])
            steps = train.get("max_steps")
            if measured and steps:
                ahead += measured * (steps - train["step"]) * r["gpus"] / 3600
            else:
                runtime = ((config["models"][r["model"]].get("train_resources") or {}).get("runtime", 60))
                ahead += runtime / 60 * r["gpus"]
                estimated.append(f"train/{r['model']}/{r['method']}")
        if r["eval"]["state"] != "done" and eval_gpus.get(r["model"]):
            runtime = (config["models"][r["model"]].get("eval_resources") or {}).get("runtime", 60)
            jobs = 1 if (config.get("eval") or {}).get("group_benchmarks") else r["eval"]["total"] - r["eval"]["done"]
            ahead += jobs * runtime / 60 * eval_gpus[r["model"]]
            estimated.append(f"eval/{r['model']}/{r['method']}")
    return {"spent": finished + running, "spent_finished_jobs": finished, "spent_running_training": running,
            "ahead": ahead, "ahead_from_configured_runtime": estimated}


def _model_step_seconds(rows: list[dict], model: str) -> float | None:
    measured = [r["train"]["step_s"] for r in rows if r["model"] == model and r["train"] and r["train"].get("step_s")]
    return statistics.median(measured) if measured else None


def collect(root: Path, overrides: dict, configfile: Path | None = None) -> dict:
    preset, config = load_config(root, overrides, configfile)
    checkout, now = Checkout(root), time.time()
    rows = [cell_status(checkout, config, model, method, now)
            for model, spec in config["models"].items() for method in spec["methods"]]
    return {"preset": preset, "root": str(root), "time": now, "cells": rows,
            "gpu_hours": gpu_hours(checkout, config, rows),
            "counts": {stage: {s: sum(1 for r in rows if r[stage] and r[stage]["state"] == s) for s in STATES}
                       for stage in ("train", "convert", "eval")}}


def _hms(seconds) -> str:
    return cost_mod.hms(seconds) if seconds is not None else "?"


def _train_text(train: dict | None) -> str:
    if train is None:
        return "-"
    text = f"{train['state']} {train['step']}/{train['max_steps'] or '?'}"
    if train["state"] == "running":
        reward = "?" if train.get("reward") is None else f"{train['reward']:.3f}"
        text += f", reward {reward}, {_hms(train.get('elapsed_s'))} elapsed, ETA {_hms(train.get('eta_s'))}"
    return text


def render_text(status: dict) -> str:
    lines = [f"vppo status: preset {status['preset']}, {status['root']}",
             f"{'model':<16} {'method':<16} {'train':<58} {'convert':<9} eval"]
    notes = []
    for r in status["cells"]:
        ev = r["eval"]
        lines.append(f"{r['model']:<16} {r['method']:<16} {_train_text(r['train']):<58} "
                     f"{(r['convert'] or {}).get('state', '-'):<9} {ev['state']} {ev['done']}/{ev['total']}")
        if r["train"] and r["train"].get("note"):
            notes.append(f"  {r['model']}/{r['method']}: {r['train']['note']}")
    hours = status["gpu_hours"]
    lines += notes + [f"GPU-hours: {hours['spent']:.2f} spent ({hours['spent_finished_jobs']:.2f} finished jobs, "
                      f"{hours['spent_running_training']:.2f} running training), about {hours['ahead']:.2f} ahead"
                      + (f" ({len(hours['ahead_from_configured_runtime'])} job(s) at their configured runtime, "
                         "not yet measured)" if hours["ahead_from_configured_runtime"] else "")]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: here)")
    parser.add_argument("--config", nargs="*", default=[], metavar="preset=NAME", help="as for snakemake")
    parser.add_argument("--configfile", type=Path, default=None, help="as for snakemake: the run's configuration")
    parser.add_argument("--json", action="store_true", help="the whole status as one JSON object")


def run(args: argparse.Namespace) -> int:
    overrides = parse_key_values(args.config, "--config")  # OptionError (an InputError) for a malformed pair
    status = collect(args.root, overrides, args.configfile)
    print(json.dumps(status, indent=1, sort_keys=True) if args.json else render_text(status))
    return 0
