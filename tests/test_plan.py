"""``vppo plan``: disk and GPU-hours derived from a workflow configuration (models' parameter counts, recipes,
methods, resources), printed, and a short disk stops it in one line with exit 2."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from vppo.cli import main
from vppo.reporting.plan import CHECKPOINTS_AT_PEAK, checkpoint_gb, plan_from_config, read_config

PAPER = Path(__file__).resolve().parents[1] / "workflow" / "config" / "paper.yaml"


def test_the_paper_plan_follows_its_models_recipes_and_methods():
    config = read_config(PAPER)
    plan = plan_from_config(config)
    # a checkpoint as saved: ZeRO-3 optimizer state (12 B) + consolidated bf16 weights (2 B) per parameter
    assert checkpoint_gb(8.3, bf16=True) == pytest.approx(116.2) and checkpoint_gb(33.5, bf16=True) == pytest.approx(469)
    runs7, disk7 = plan.runs["qwen2.5-vl-7b"]
    runs32, disk32 = plan.runs["qwen2.5-vl-32b"]
    assert (runs7, runs32) == (8, 3)  # base is evaluated, never trained
    assert disk7.peak == pytest.approx(CHECKPOINTS_AT_PEAK * 116.2 + 2 * 16.6)
    assert disk7.kept == pytest.approx(116.2 + 2 * 16.6)  # prune_work keeps one checkpoint
    train = {g.model: g for g in plan.jobs if g.stage == "train"}
    assert train["qwen2.5-vl-7b"].gpu_hours == 8 * 8 * 48 and train["qwen2.5-vl-32b"].gpu_hours == 3 * 32 * 72
    evals = {g.model: g for g in plan.jobs if g.stage == "eval"}
    assert evals["qwen2.5-vl-7b"].jobs == 9 * 8  # one job per method and benchmark
    assert plan.peak_gb == pytest.approx(8 * disk7.peak + 3 * disk32.peak + 2 * (8.3 + 33.5))
    assert plan.peak_with(1) == pytest.approx(plan.kept_gb + disk32.peak - disk32.kept)
    # the plan moves with the configuration: one more trained method, no pruning, float32 training
    changed = copy.deepcopy(config)
    changed["models"]["qwen2.5-vl-7b"]["methods"].append("vppo_k0.4")
    changed["train"].update(prune_work=False, set={"bf16": False})
    other = plan_from_config(changed)
    runs, disk = other.runs["qwen2.5-vl-7b"]
    assert runs == 9 and disk.checkpoint == pytest.approx(8.3 * 16) and disk.kept == pytest.approx(
        2 * 8.3 * 16 + 8.3 * 4 + 8.3 * 2)


def test_vppo_plan_prints_the_need_and_stops_in_one_line_when_the_disk_is_short(tmp_path, capsys):
    assert main(["plan", "--config", str(PAPER), "--root", str(tmp_path), "--runs-at-once", "1"]) in (0, 2)
    printed = capsys.readouterr().out
    assert "GPU-hours" in printed and "at the peak" in printed and "at most 1 run(s)" in printed
    huge = read_config(PAPER)
    for spec in huge["models"].values():
        spec["params_b"] = 1e9  # more disk than any machine has
    config = tmp_path / "huge.yaml"
    config.write_text(yaml.safe_dump(huge))
    assert main(["plan", "--config", str(config), "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(config) in error and "GB free but" in error
    assert main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
