"""The workflow's plan (vppo.workflow_plan) called directly, without Snakemake subprocesses: preset selection, the
config checks, cells and targets, SLURM resources and each stage's options. tests/test_workflow.py keeps the
end-to-end dry-runs that show the rules wire these in."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from vppo.training.recipes import RecipeError, load_recipe
from vppo.workflow_plan import config as plan_config
from vppo.workflow_plan import eval as eval_plan
from vppo.workflow_plan import tables as tables_plan
from vppo.workflow_plan import train as train_plan
from vppo.workflow_plan.data import PLAN_CONFIG, cli_pairs, plan_config_text, plan_options, preflight_options
from vppo.workflow_plan.plan import LIGHT_RESOURCES, Plan
from vppo.workflow_plan.resources import (grown_runtime, host_memory_mb, job_resources, memory_mb, slurm_placement,
                                          threads_per_process)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "workflow" / "config"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
RECIPE_DIR = ROOT / "vppo" / "training" / "recipes"


def raw(preset: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text())


def validated(config: dict, tmp_path: Path) -> dict:
    """``config`` checked (and its defaults filled) as common.smk does: moved keys, schema, cross references."""
    plan_config.check_moved_keys(config)
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(plan_config.filled_schema(SCHEMA, CONFIG_DIR, RECIPE_DIR)))
    validate(config, str(schema))
    plan_config.check_config(config)
    return config


def cell(model: str, method: str = "base", **more) -> SimpleNamespace:
    return SimpleNamespace(model=model, method=method, **more)


@pytest.fixture(scope="module")
def plans(tmp_path_factory) -> dict[str, Plan]:
    folder = tmp_path_factory.mktemp("schema")
    return {preset: Plan(validated(raw(preset), folder)) for preset in ("default", "paper", "released", "mini")}


# ------------------------------------------------------------------------------------------------ config
def test_a_preset_replaces_the_default_file_and_command_line_values_go_on_top():
    default = {"preset": "paper", "models": {"tiny": {}}, "check_resources": {"cpus": 1}}
    chosen = plan_config.select_preset(default, {"preset": "paper", "eval": {"samples": 2}}, CONFIG_DIR,
                                       given_configfile=False)
    assert chosen["models"].keys() == raw("paper")["models"].keys()  # the default file's models are gone
    assert chosen["check_resources"] == raw("paper")["check_resources"]
    assert chosen["eval"]["samples"] == 2 and chosen["eval"]["backend"] == raw("paper")["eval"]["backend"]
    given = {"preset": "paper", "models": {"mine": {}}}  # --configfile: the given file is the configuration
    assert plan_config.select_preset(given, {}, CONFIG_DIR, given_configfile=True) == given


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"config preset 'papr'.*'paper'"):
        plan_config.select_preset({"preset": "papr"}, {}, CONFIG_DIR, given_configfile=False)


def test_command_line_values_are_typed_by_the_schema():
    assert plan_config.command_line_config({"eval": {"samples": "4"}}, SCHEMA) == {"eval": {"samples": 4}}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["eval"].update(backnd=c["eval"].pop("backend")), "'backnd' was unexpected"),
    (lambda c: c["analysis"].update(variants=["patch:k3", "black:k3"]), "'black:k3' is not one of"),
])
def test_the_schema_names_a_misspelt_key_or_an_unknown_value(tmp_path, edit, message):
    config = raw("mini")
    edit(config)
    with pytest.raises(Exception, match=message):
        validated(config, tmp_path)


@pytest.mark.parametrize("preset, edit, message", [
    ("default", lambda c: c["models"]["tiny"]["methods"].append("vppo_k0.0"),
     "models.tiny.methods: unknown method 'vppo_k0.0'"),
    ("mini", lambda c: c["study"]["methods"].append("base"), r"study.methods: \['base'\] not trained by mini_s0"),
    ("default", lambda c: c["tables"]["main"]["methods"].append("nope"), r"tables.main.methods: \['nope'\] not in"),
    ("default", lambda c: c["models"]["tiny"]["train_resources"].update(nodes=1),
     "models.tiny.train_resources.nodes: no longer a config key; the training layout lives in the recipe only: "
     "set num_nodes in vppo/training/recipes/smoke.yaml"),
])
def test_a_configuration_the_run_cannot_honour_stops_at_config_time(tmp_path, preset, edit, message):
    config = raw(preset)
    edit(config)
    with pytest.raises(ValueError, match=message):
        validated(config, tmp_path)


def test_a_colocated_tensor_parallel_group_must_fit_on_one_node():
    """The 32B recipe on 8 nodes of 2 GPUs: its 16 ranks divide into 4-way groups (the old check), but each group
    would span two nodes. Everything else of that layout is valid: the old code accepted it."""
    assert load_recipe("32b").vllm_tensor_parallel_size == 4
    with pytest.raises(RecipeError, match=r"'vllm_tensor_parallel_size' \(4\) must divide the node's 2 ranks"):
        load_recipe("32b", {"num_nodes": 8, "gpus_per_node": 2})
    load_recipe("32b", {"num_nodes": 8, "gpus_per_node": 2, "vllm_mode": "server"})  # no colocated engine
    # a CPU layout may span nodes: the vLLM tier's two-node run has a TP-2 engine across two one-rank nodes
    assert load_recipe("cpu_zero3", {"num_nodes": 2, "cpu_ranks_per_node": 1}).vllm_tensor_parallel_size == 2


def test_the_workflow_finds_a_tensor_parallel_group_spanning_nodes_before_queueing(tmp_path, monkeypatch):
    """The 32B recipe on 8 nodes of 2 GPUs, as a configured model's recipe: the config check names it."""
    original = plan_config.recipe
    two_gpu_nodes = dataclasses.replace(original("32b"), num_nodes=8, gpus_per_node=2)
    monkeypatch.setattr(plan_config, "recipe", lambda name: two_gpu_nodes if name == "32b" else original(name))
    with pytest.raises(ValueError, match=r"models.qwen2.5-vl-32b.recipe \(32b\): key 'vllm_tensor_parallel_size'"):
        validated(raw("paper"), tmp_path)


def test_a_recipe_file_the_plan_cannot_read_is_named(tmp_path, monkeypatch):
    (tmp_path / "odd.yaml").write_text((RECIPE_DIR / "7b.yaml").read_text() + "gpu_count: 8\n")
    monkeypatch.setattr(plan_config, "RECIPE_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"odd.yaml: .*'gpu_count'"):
        plan_config.recipe.__wrapped__("odd")


# ------------------------------------------------------------------------------------------------- cells
def test_cells_checkpoints_and_targets(plans):
    paper, released, mini = plans["paper"], plans["released"], plans["mini"]
    assert len(paper.eval_cells()) == (9 + 3) * 8 and len(paper.training_runs()) == 8 + 3
    assert released.trained_methods("qwen2.5-vl-7b") == []
    assert released.checkpoint_dir(cell("qwen2.5-vl-7b", "vppo")) == "resources/models/qwen2.5-vl-7b/released_vppo"
    assert paper.checkpoint_dir(cell("qwen2.5-vl-7b", "dapo")) == "results/checkpoints/qwen2.5-vl-7b/dapo"
    assert mini.checkpoint_dir(cell("mini_s2", "base")) == "resources/models/mini_s0/base"  # the seeds share one
    targets = mini.all_targets()
    assert "results/report.html" in targets and "results/study/study.md" in targets
    assert "results/analysis/mini_s0/gradient_variance.json" in targets
    assert "results/eval/mini_s1/vppo/mini_heldout.json" in targets
    assert mini.train_data == "resources/data/mini/train" and plans["default"].eval_data == "resources/data/default/eval"


# --------------------------------------------------------------------------------------------- resources
def test_host_memory_grows_with_the_model_and_the_ranks():
    assert host_memory_mb("train", 8.3, ranks_per_node=8) == int((8 * 2 * 8.3 + 64) * 1000)
    assert host_memory_mb("eval", 33.5) == int((2 * 33.5 + 32) * 1000)
    assert host_memory_mb("convert", 8.3, ranks_per_node=8) == host_memory_mb("convert", 8.3)  # gathered once


def test_memory_and_runtime_of_a_job(plans):
    paper = plans["paper"]
    mem = memory_mb(paper, "train", paper.train_spec)
    assert mem(cell("qwen2.5-vl-7b")) == host_memory_mb("train", 8.3, ranks_per_node=8)
    assert memory_mb(paper, None, paper.light_spec)(cell("qwen2.5-vl-7b")) == LIGHT_RESOURCES["mem_mb"]
    runtime = grown_runtime(paper.eval_spec, paper.cluster["max_runtime"])
    assert [runtime(cell("qwen2.5-vl-7b"), attempt) for attempt in (1, 2, 3, 4)] == [480, 960, 1440, 1440]
    train_runtime = grown_runtime(paper.train_spec, paper.cluster["max_runtime"])
    assert train_runtime(cell("qwen2.5-vl-32b"), 1) == paper.cluster["max_runtime"]  # 72 h in 48 h slots


def test_tables_figures_report_and_study_are_light_jobs(plans):
    """They read result files with pandas and matplotlib: they asked for the cpu_resources of 64 GB and 4 h."""
    paper = plans["paper"]
    resources = job_resources(paper, paper.light_spec, "CPU")
    assert resources["mem_mb"](cell("qwen2.5-vl-7b")) <= 8000 and resources["runtime"](cell(None), 1) <= 60
    assert Plan({**paper.config, "light_resources": {"cpus": 2, "mem_mb": 9000}}).light_spec() == {"cpus": 2, "mem_mb": 9000}


def test_account_and_partitions_come_from_the_environment():
    environ = {"VPPO_SLURM_ACCOUNT": "acct", "VPPO_SLURM_PARTITION": "all", "VPPO_SLURM_GPU_PARTITION": "gpu"}
    assert slurm_placement("GPU", environ) == {"slurm_account": "acct", "slurm_partition": "gpu"}
    assert slurm_placement("CPU", environ) == {"slurm_account": "acct", "slurm_partition": "all"}
    assert slurm_placement("CPU", {}) == {}


def test_each_training_rank_gets_its_share_of_the_nodes_cpus():
    """64 CPUs, 8 ranks per node: every rank inherits OMP_NUM_THREADS, so it is the node's CPUs divided among the
    ranks and the colocated vLLM engines (one per tensor-parallel group), never the whole 64."""
    assert threads_per_process(64, load_recipe("7b")) == 64 // (8 + 8)  # 8 ranks, 8 one-GPU engines
    assert threads_per_process(64, load_recipe("32b")) == 64 // (8 + 2)  # 8 ranks, 2 four-GPU engines
    assert threads_per_process(64, load_recipe("7b", {"use_vllm": False})) == 8
    assert threads_per_process(4, load_recipe("smoke")) == 4 and threads_per_process(1, load_recipe("7b")) == 1


def test_the_training_environment_names_threads_and_the_network_interface(plans):
    paper = plans["paper"]
    assert train_plan.environment(paper, cell("qwen2.5-vl-7b")) == "OMP_NUM_THREADS=4"
    assert train_plan.environment(paper, cell("qwen2.5-vl-32b"), "ib0") == \
        "OMP_NUM_THREADS=6 GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME=ib0"
    assert shlex.split(train_plan.environment(paper, cell("qwen2.5-vl-7b"), "en p0;x"))[1] == "GLOO_SOCKET_IFNAME=en p0;x"
    assert train_plan.environment(plans["default"], cell("tiny")) == "OMP_NUM_THREADS=1"


# ----------------------------------------------------------------------------------------------- options
def test_training_launch_and_options(plans, tmp_path):
    paper, default = plans["paper"], plans["default"]
    assert train_plan.launch_command(default, cell("tiny")) == "workflow/scripts/vppo train"
    assert train_plan.launch_command(paper, cell("qwen2.5-vl-32b")).startswith("VPPO_CPUS_PER_NODE=64 bash ")
    assert train_plan.is_multi_node(paper, cell("qwen2.5-vl-32b")) and not train_plan.is_multi_node(paper, cell("qwen2.5-vl-7b"))
    config = validated({**raw("default"), "train": {"max_steps": 3, "set": {"learning_rate": "1e-5"}}}, tmp_path)
    assert train_plan.train_options(Plan(config)) == "--max-steps 3 --set learning_rate=1e-5"
    assert train_plan.prune_command(Plan(config), cell("tiny", "vppo")).endswith("prune-work work/train/tiny/vppo")
    assert cli_pairs("--option", {"path": "a b; c"}) == "--option 'path=a b; c'"


def test_evaluation_options_follow_the_protocol(plans):
    paper, default = plans["paper"], plans["default"]
    options = eval_plan.eval_options(paper, cell("qwen2.5-vl-32b", "vppo"))
    assert "--backend vllm --samples 8 --max-new-tokens 2048" in options and options.endswith("--tensor-parallel-size 4")
    assert "--tensor-parallel-size" not in eval_plan.eval_options(default, cell("tiny", "vppo"))
    assert "--variants patch:k3" in eval_plan.variant_options(plans["mini"], cell("mini_s0", "dapo"))
    assert preflight_options(paper).startswith("--gpus 1 --vllm") and preflight_options(default).startswith("--gpus 0 ")


def test_the_preflight_plans_the_disk_of_the_effective_configuration(plans, tmp_path, capsys):
    """The preflight's `vppo plan` reads the configuration the workflow runs (preset, --config values, schema
    defaults), so the disk it checks is this plan's; `cluster.runs_at_once` bounds the peak."""
    from vppo.reporting import plan as disk_plan

    paper = plans["paper"]
    assert plan_options(paper) == f"--config {PLAN_CONFIG} --root ."
    assert plan_options(Plan({**paper.config, "cluster": {**paper.cluster, "runs_at_once": 4}})).endswith(
        " --runs-at-once 4")
    written = tmp_path / "plan_config.yaml"
    written.write_text(plan_config_text(paper))
    planned = disk_plan.plan_from_config(disk_plan.read_config(written))
    assert planned == disk_plan.plan_from_config(paper.config)
    assert 7_000 < planned.peak_gb < 8_500 and 11_000 < planned.gpu_hours < 12_500  # docs/cluster.md's figures


def test_check_runs_with_the_references_protocol_not_the_configs(plans):
    """A results-folder reference gives its own protocol (no sampling options); the paper states no backend, so the
    config's goes with a paper reference."""
    default = plans["default"]
    for reference, backend in (("results/eval/tiny/base", False), ("paper:qwen2.5-vl-7b/vppo", True)):
        options = tables_plan.check_options(Plan({**default.config, "reference": reference}))
        assert "--seed 0" in options and ("--backend hf" in options) == backend
        assert not any(flag in options for flag in ("--max-new-tokens", "--limit", "--samples"))
    with pytest.raises(ValueError, match="needs --config candidate="):
        tables_plan.required_config(default, "candidate", SimpleNamespace(name="mine"))


def test_tables_figures_and_report_read_what_the_config_fills(plans):
    paper, released = plans["paper"], plans["released"]
    assert tables_plan.figure_roots(released) == "--analysis-root results/analysis"  # nothing trained
    assert "--train-root results/train" in tables_plan.figure_roots(paper)
    assert "--paper-model qwen2.5-vl-7b=qwen2.5-vl-7b" in tables_plan.paper_model_pairs(paper)
    gpus = yaml.safe_load(tables_plan.gpus_per_job(paper))
    assert gpus["train/qwen2.5-vl-32b"] == 32 and gpus["eval/qwen2.5-vl-32b"] == 4
    assert tables_plan.table_inputs(paper, SimpleNamespace(table="main"))[0].startswith("results/eval/qwen2.5-vl-7b/")
    assert tables_plan.study_analysis_options(plans["mini"]).startswith("--analysis-root results/analysis")
