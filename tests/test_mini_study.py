"""The mini study's seed table (`vppo study`) and a 2-step version of the whole `mini` preset through the DAG."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from doubles.reporting_inputs import write_eval_result
from test_workflow import copy_checkout, planned_jobs, rule_counts
from vppo.cli import main
from vppo.reporting.study import paired_difference


def test_paired_difference_by_hand():
    mean, half = paired_difference([61.0, 62.0, 63.0], [60.0, 60.0, 60.0])
    # diffs 1, 2, 3: mean 2, sd 1, t(0.975, df 2) = 4.3027
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert paired_difference([5.0], [4.0]) == (1.0, None)  # one seed: no interval


def test_study_table_pairs_seeds(tmp_path):
    root = tmp_path / "eval"
    write_eval_result(root, "m0", "base", "mini_heldout", 50.0, 2.0)
    for model, dapo, vppo in (("m0", 58.0, 60.0), ("m1", 56.0, 59.0), ("m2", 60.0, 61.0)):
        write_eval_result(root, model, "dapo", "mini_heldout", dapo, 2.0)
        write_eval_result(root, model, "vppo", "mini_heldout", vppo, 2.0)
    out = tmp_path / "study"
    args = ["study", "--models", "m0,m1,m2", "--methods", "dapo,vppo", "--baseline", "dapo", "--start", "m0/base",
            "--benchmarks", "mini_heldout", "--eval-root", str(root), "--out", str(out)]
    assert main(args) == 0
    study = pd.read_csv(out / "study.csv").set_index("method")
    assert study.loc["vppo", "mean"] == pytest.approx(60.0)
    assert study.loc["vppo", "se_seeds"] == pytest.approx(math.sqrt(1.0) / math.sqrt(3), abs=1e-4)  # sd of 60,59,61
    assert study.loc["vppo", "vs_start"] == pytest.approx(10.0)
    assert study.loc["vppo", "vs_baseline"] == pytest.approx(2.0)  # diffs 2, 3, 1 paired by seed
    assert study.loc["vppo", "vs_baseline_ci"] == pytest.approx(4.302653 / math.sqrt(3), abs=1e-4)
    assert math.isnan(study.loc["dapo", "vs_baseline"])
    assert "| `vppo` | 60.00, 59.00, 61.00 | 60.0 ± 0.6 | +10.0 ± 2.5 | +2.0 ± 2.5 |" in (out / "study.md").read_text()
    (root / "m2" / "vppo" / "mini_heldout.json").unlink()
    done = subprocess.run([sys.executable, "-m", "vppo", *args], capture_output=True, text=True)
    assert done.returncode == 2 and "m2/vppo/mini_heldout.json: missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _two_step_config(repo, base: Path | None = None) -> dict:
    config = yaml.safe_load((repo / "workflow" / "config" / "mini.yaml").read_text())
    if base is not None:  # a local checkpoint folder instead of building the warm start (fetch-model copies it)
        config["models"]["mini_s0"]["base"] = str(base)
    config["train"]["max_steps"] = 2
    config["data"]["train"]["options"]["n_rows"] = 16
    config["data"]["eval"]["options"]["n_rows"] = 2
    config["models"] = {k: v for k, v in config["models"].items() if k in ("mini_s0", "mini_s1")}
    # One trained method per seed keeps this under 3 minutes; the vppo path on the mini model is
    # test_mini_task.py's 2-step run.
    config["models"]["mini_s0"]["methods"] = ["base", "dapo"]
    config["models"]["mini_s1"]["methods"] = ["dapo"]
    config["study"].update(models=["mini_s0", "mini_s1"], methods=["dapo"])
    config["tables"]["mini_study"]["methods"] = ["base", "dapo"]
    config["analysis"].update(methods=["base", "dapo"], n_prompts=2, samples=2)
    config["analysis"]["gradient_variance"] = {"replicates": 3, "prompts": 2, "samples": 4}
    return config


def test_the_preset_plans_three_seeds_from_one_base(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--config", "preset=mini"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = planned_jobs(done.stdout + done.stderr)
    counts = rule_counts(jobs)
    assert counts["fetch_base_model"] == 1 and counts["train"] == 27 and counts["study"] == 1
    # the measured gradient variance, once, on the warm start every seed shares
    assert [j["wildcards"] for j in jobs if j["rule"] == "gradient_variance"] == [{"model": "mini_s0"}]
    # analysis.variants: each analysed method's responses also scored under every dependency pass
    variants = sorted(j["wildcards"]["method"] for j in jobs if j["rule"] == "analyze_dependency_variants")
    assert variants == ["base", "dapo", "vppo"] and counts["analyze_dependency"] == 3
    seeds = sorted(j["wildcards"]["model"] for j in jobs if j["rule"] == "train")
    assert seeds == ["mini_s0"] * 9 + ["mini_s1"] * 9 + ["mini_s2"] * 9
    study = _study_job(done.stdout + done.stderr)
    assert "results/train/mini_s2/vppo_tgf_only" in study["input"] and "results/analysis/mini_s0/vppo.json" in study["input"]
    assert {"results/study/training_curves.png", "results/study/dependency_findings.png"} <= set(study["output"])


def test_the_qwen3vl_preset_plans_its_family_three_seeds_and_its_own_checkpoint(tmp_path):
    """Preset mini_qwen3vl: the mini-qwen3vl warm start, DAPO and VPPO x 3 seeds, and both data sources told the
    family (their pictures' cells follow it); preset mini's data commands name no family (unchanged)."""
    repo = copy_checkout(tmp_path / "repo")
    jobs = {}
    for preset in ("mini_qwen3vl", "mini"):
        done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--config",
                               f"preset={preset}"], cwd=repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        jobs[preset] = planned_jobs(done.stdout + done.stderr)
    counts = rule_counts(jobs["mini_qwen3vl"])
    assert counts["train"] == 6 and counts["eval_benchmarks"] == 7 and counts["study"] == 1
    assert sorted((j["wildcards"]["model"], j["wildcards"]["method"]) for j in jobs["mini_qwen3vl"] if j["rule"] == "train") \
        == [(f"q3mini_s{seed}", method) for seed in range(3) for method in ("dapo", "vppo")]
    shells = {preset: {j["rule"]: j["shell"] for j in found if j["rule"] in ("fetch_base_model", "prepare_train_data",
                                                                              "prepare_eval_data")}
              for preset, found in jobs.items()}
    assert "fetch-model mini-qwen3vl resources/models/q3mini_s0/base --family qwen3-vl" in shells["mini_qwen3vl"]["fetch_base_model"]
    assert all("--option family=qwen3-vl" in shells["mini_qwen3vl"][r] for r in ("prepare_train_data", "prepare_eval_data"))
    assert not any("family=" in shells["mini"][r] for r in ("prepare_train_data", "prepare_eval_data"))


def _study_job(output: str) -> dict:
    """Input and output paths of the dry-run's study job."""
    block = output.split("\nrule study:", 1)[1].split("\nrule ", 1)[0]
    return {key: re.search(rf"^\s+{key}: (.*)$", block, re.MULTILINE).group(1).split(", ") for key in ("input", "output")}


def _dry_run_mini_with(tmp_path, change) -> subprocess.CompletedProcess:
    repo = copy_checkout(tmp_path / "repo")
    config = yaml.safe_load((repo / "workflow" / "config" / "mini.yaml").read_text())
    change(config)
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile",
                           str(tmp_path / "mini.yaml")], cwd=repo, capture_output=True, text=True, timeout=600)


def test_a_study_without_analysis_plans_no_dependency_figure(tmp_path):
    done = _dry_run_mini_with(tmp_path, lambda config: config.pop("analysis"))
    assert done.returncode == 0, done.stdout + done.stderr
    study = _study_job(done.stdout + done.stderr)
    assert "results/study/training_curves.png" in study["output"]
    assert not any("analysis" in p or "dependency_findings" in p for p in study["input"] + study["output"])


@pytest.mark.slow  # the whole preset through Snakemake (~100 s on 2 cores, + the mini_dir fixture's 80 s)
def test_two_steps_of_the_mini_preset_run_end_to_end(tmp_path, mini_dir):
    """The whole preset, shrunk (2 steps, 2 seeds, 1 method, 2 questions; the warm start is the session's shorter
    one, copied by the fetch rule, rather than built again: `vppo fetch-model mini` is the same builder, run by
    test_mini_task.py): every stage runs and the study table, the mini table and the report come out; each seed
    trained with its own seed."""
    repo = copy_checkout(tmp_path / "repo")
    config = tmp_path / "mini2.yaml"
    config.write_text(yaml.safe_dump(_two_step_config(repo, base=mini_dir)))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(config)],
                          cwd=repo, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = pd.read_csv(repo / "results" / "study" / "study.csv")
    assert list(set(study["method"])) == ["dapo"] and set(study["n_seeds"]) == {2}
    assert set(study["benchmark"]) == {"mini_heldout", "mini_control"}
    assert "Seed study" in (repo / "results" / "report.html").read_text()
    assert "| `dapo` | ours |" in (repo / "results" / "tables" / "mini_study.md").read_text()
    summaries = {m: yaml.safe_load((repo / "results" / "train" / m / "dapo" / "train_summary.json").read_text())
                 for m in ("mini_s0", "mini_s1")}
    assert [summaries[m]["seed"] for m in ("mini_s0", "mini_s1")] == [0, 1]
    assert not (repo / "resources" / "models" / "mini_s1").exists()  # the seeds share mini_s0's base
    variance = json.loads((repo / "results" / "analysis" / "mini_s0" / "gradient_variance.json").read_text())
    assert variance["methods"]["grpo"]["variance_ratio"] == 1.0 and variance["replicates"] == 3
    compared = json.loads((repo / "results" / "analysis" / "mini_s0" / "dapo.variants.json").read_text())
    assert list(compared["variants"]) == ["blur:k3", "grey:k3", "noise:k3", "patch:k3", "patch:kl"]
    assert compared["variants"]["patch:k3"]["vs_reference"]["kept_jaccard_mean"] == 1.0
    assert (compared["model"], compared["method"], compared["seed"]) == ("mini_s0", "dapo", 0)
