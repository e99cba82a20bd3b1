"""The study registry (vppo/catalog.py) and the one reader of the paper's numbers (vppo/reference.py).

A method preset, a ninth benchmark and a new table are added from the registry alone (plus the benchmark's task
folder and a reference CSV) and appear in the default DAG's plan; the paper's Avg stays the mean of its own
eight with a ninth benchmark present; the config schema, the lmms-eval group and the CLI help derive from (or
are checked against) the registry; a table name may contain "_".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_check import PAPER_VPPO_7B, write_results
from test_workflow import ROOT, copy_checkout, planned_jobs, rule_counts
from vppo import catalog
from vppo.catalog import (AVG, BENCHMARK_KEYS, METHOD_PRESETS, PAPER_AVG, PAPER_MODELS, TABLES, Benchmark, Table,
                          fill_config_schema, get_method, method_grammar)
from vppo.cli import main
from vppo.evaluation.check import Score, paper_reference, with_average
from vppo.reference import ReferenceError, load_reference, read_reference_file, table_of
from vppo.reporting.tables import build_table, to_markdown

NINTH = Benchmark("geo3k_copy", "Geo3k-copy", 601, "number", "hiyouga_geometry3k_copy")
MINI = Table("mini_study", "A small study", ("base", "vppo"), "qwen2.5-vl-7b")
MAIN_CSV = (ROOT / "results" / "reference" / "paper_main_7b.csv").read_text()


@pytest.fixture
def ninth_benchmark(monkeypatch):
    """NINTH registered as a supported benchmark outside the paper's Avg set, for this test only."""
    monkeypatch.setitem(catalog.BENCHMARK_BY_KEY, NINTH.key, NINTH)
    return NINTH.key


def cells(scores: dict[str, float], stderr: float = 1.0, model: str = "tiny", method: str = "vppo") -> pd.DataFrame:
    """Frame rows as load_eval_frame gives them (only the fields the tables read)."""
    return pd.DataFrame([{"model": model, "method": method, "benchmark": key, "ours": value, "stderr": stderr,
                          "n_questions": 10, "n_samples": 80, "k": 8, "backend": "hf", "seed": 0,
                          "checkpoint_sha256": "ab" * 32, "data_sha256": "cd" * 32, "eval_file": f"{key}.json"}
                         for key, value in scores.items()])


# ---------------------------------------------------------------------------------------- the paper's Avg

def test_avg_in_tables_is_the_papers_set_only_with_a_ninth_benchmark(ninth_benchmark):
    scores = {**PAPER_VPPO_7B, ninth_benchmark: 5.0}
    keys = [*PAPER_AVG, ninth_benchmark]
    long = build_table("main", "tiny", "qwen2.5-vl-7b", ["vppo"], keys, cells(scores), load_reference(ROOT / "results/reference"))
    by_column = long.set_index("benchmark")
    assert by_column.loc[AVG, "ours"] == pytest.approx(sum(PAPER_VPPO_7B.values()) / 8)  # 57.45, not the 9-mean
    assert by_column.loc[AVG, "n_questions"] == 80  # provenance of the eight cells only
    assert by_column.loc[ninth_benchmark, "ours"] == 5.0 and pd.isna(by_column.loc[ninth_benchmark, "paper"])
    assert "| Geo3k-copy | Avg |" in to_markdown(long)  # the extra column, before Avg


def test_avg_in_check_is_the_papers_set_only_with_a_ninth_benchmark(ninth_benchmark, tmp_path, capsys):
    with_ninth = {k: Score(v, 1.0) for k, v in {**PAPER_VPPO_7B, ninth_benchmark: 5.0}.items()}
    assert with_average(with_ninth, [*PAPER_AVG, ninth_benchmark])[AVG].accuracy == pytest.approx(57.45)
    assert AVG not in with_average(with_ninth, [ninth_benchmark, *PAPER_AVG[:7]])  # not the whole set: no Avg
    # End to end: a low ninth benchmark must not drag our Avg below the paper's (57.45 vs 57.5 is no change).
    cand = write_results(tmp_path / "cand", {**PAPER_VPPO_7B, ninth_benchmark: 5.0})
    keys = ",".join([*PAPER_AVG, ninth_benchmark])
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-7b/vppo", "--benchmarks", keys]) == 0
    assert "| avg | 15271 | 57.45 ± 0.49 | 57.50 | -0.05 ± 0.49 |" in capsys.readouterr().out


def test_all_means_supported_and_paper_means_the_avg_set(ninth_benchmark, monkeypatch):
    monkeypatch.setattr(catalog, "BENCHMARKS", (*catalog.BENCHMARKS, NINTH))
    assert [b.key for b in catalog.resolve_benchmarks("all")] == [*PAPER_AVG, *(b.key for b in catalog.EXTRA_BENCHMARKS),
                                                                  ninth_benchmark]
    assert [b.key for b in catalog.resolve_benchmarks("paper")] == list(PAPER_AVG)


# ------------------------------------------------------------------------------------ reference reader

def write_reference(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_table_name_with_an_underscore_round_trips(monkeypatch, tmp_path):
    monkeypatch.setitem(TABLES, MINI.name, MINI)
    ref = write_reference(tmp_path / "ref", {"paper_mini_study_7b.csv": "model,method,Geo3k,Avg\nQwen2.5-VL-7B,vppo,46.5,57.5\n",
                                             "paper_main_7b.csv": MAIN_CSV})
    assert table_of(ref / "paper_mini_study_7b.csv") == "mini_study"
    reference = load_reference(ref)
    assert reference.source("mini_study", "qwen2.5-vl-7b") == str(ref / "paper_mini_study_7b.csv")
    long = build_table("mini_study", "tiny", "qwen2.5-vl-7b", ["vppo"], ["geo3k"], cells({"geo3k": 40.0}), reference)
    assert long.set_index("benchmark").loc["geo3k", "paper"] == 46.5
    assert to_markdown(long).startswith("# A small study: avg@8 accuracy (%)")
    out = tmp_path / "tables" / "mini_study"
    write_results(tmp_path / "eval" / "tiny" / "vppo", {"geo3k": 40.0})
    assert main(["tables", "--table", "mini_study", "--model", "tiny", "--methods", "vppo", "--benchmarks", "geo3k",
                 "--eval-root", str(tmp_path / "eval"), "--reference-dir", str(ref), "--out", str(out)]) == 0
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert set(csv["table"]) == {"mini_study"} and list(csv["paper"]) == [46.5, 57.5]


def test_tables_and_check_read_the_same_numbers():
    reference = load_reference(ROOT / "results" / "reference")
    for row in reference.rows:
        model = next(k for k, v in catalog.MODEL_PAPER_NAMES.items() if v == row.model)
        method = next(k for k, v in catalog.METHOD_PAPER_NAMES.items() if v == row.method)
        from_check = paper_reference(f"paper:{model}/{method}", ROOT / "results" / "reference")
        for column, value in row.values.items():
            assert reference.value(row.table, model, method, column) == value == from_check[column].accuracy


@pytest.mark.parametrize("name, text, message", [
    ("paper_main_7b.csv", "model,method,Geo3k\nQwen2.5-VL-7B,vppo,4x.5\n",
     r"paper_main_7b.csv: line 2 \(row 'vppo'\): field 'Geo3k': '4x.5' is not a number"),
    ("paper_main_7b.csv", "model,method,Geo3K\nQwen2.5-VL-7B,vppo,46.5\n",
     r"paper_main_7b.csv: field 'Geo3K': not a benchmark's paper name"),
    ("paper_main_7b.csv", "model,row,Avg\nQwen2.5-VL-7B,vppo,57.5\n", r"paper_main_7b.csv: header: needs a 'model'"),
    ("paper_main.csv", "model,method,Avg\nQwen2.5-VL-7B,vppo,57.5\n", r"paper_main.csv: file name: expected"),
    ("paper_nosuch_7b.csv", "model,method,Avg\nQwen2.5-VL-7B,vppo,57.5\n", r"table 'nosuch' is not in vppo.catalog"),
])
def test_a_bad_reference_is_one_line_naming_file_row_and_field_for_both_callers(tmp_path, capsys, name, text, message):
    ref = write_reference(tmp_path / "ref", {name: text})
    with pytest.raises(ReferenceError, match=message):
        read_reference_file(ref / name)
    cand = write_results(tmp_path / "cand", PAPER_VPPO_7B, questions=10)
    assert main(["check", str(cand), "--against", "paper:qwen2.5-vl-7b/vppo", "--reference-dir", str(ref)]) == 2
    (tmp_path / "eval").mkdir()
    assert main(["tables", "--table", "main", "--model", "tiny", "--eval-root", str(tmp_path / "eval"),
                 "--reference-dir", str(ref), "--out", str(tmp_path / "t" / "main")]) == 2
    _, err = capsys.readouterr()
    check_err, tables_err = err.split("\n", 1)
    assert re.search(message, check_err) and re.search(message, tables_err)
    assert len([line for line in tables_err.splitlines() if line.startswith("vppo tables:")]) == 1


def test_two_tables_disagreeing_on_a_number_is_an_error_naming_both(tmp_path):
    ref = write_reference(tmp_path / "ref", {"paper_main_7b.csv": MAIN_CSV,
                                             "paper_ablation_7b.csv": "model,setting,Avg\nQwen2.5-VL-7B,vppo,50.0\n"})
    with pytest.raises(ReferenceError, match=r"paper_main_7b.csv: line 5: field 'avg': 57.5 disagrees with "
                                             r".*paper_ablation_7b.csv line 2 \(50.0\)"):
        load_reference(ref).scores("qwen2.5-vl-7b", "vppo")


# ------------------------------------------------------------------------- what derives from the registry

def test_schema_enums_are_the_registrys_and_the_schema_file_names_none():
    text = (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()
    raw = yaml.safe_load(text)  # the file lists none of the names: a new benchmark, table or preset needs no edit
    assert "enum" not in raw["$defs"]["benchmark"] and "properties" not in raw["properties"]["tables"]
    assert "enum" not in raw["$defs"]["table"]["properties"]["paper_model"]
    assert "enum" not in raw["properties"]["preset"]
    assert "enum" not in raw["properties"]["models"]["additionalProperties"]["properties"]["recipe"]
    assert not re.search(r"vppo_t(as|gf)_only", text)
    presets = sorted(p.stem for p in (ROOT / "workflow" / "config").glob("*.yaml"))
    recipes = sorted(p.stem for p in (ROOT / "vppo" / "training" / "recipes").glob("*.yaml"))
    schema = fill_config_schema(yaml.safe_load(text), presets, recipes)
    assert schema["$defs"]["benchmark"]["enum"] == list(BENCHMARK_KEYS)
    assert schema["properties"]["tables"]["propertyNames"]["enum"] == list(TABLES)
    assert schema["$defs"]["table"]["properties"]["paper_model"]["enum"] == [*PAPER_MODELS, catalog.NO_PAPER_MODEL]
    assert schema["properties"]["preset"]["enum"] == presets == ["default", "mini", "mini_qwen3vl", "paper", "paper_qwen3vl",
                                                                        "released"]
    assert "enum" not in raw["properties"]["model_family"]
    assert schema["properties"]["model_family"]["enum"] == ["qwen2.5-vl", "qwen3-vl"]
    assert schema["properties"]["models"]["additionalProperties"]["properties"]["recipe"]["enum"] == recipes
    assert method_grammar() in schema["$defs"]["method"]["description"]
    assert "enum" not in raw["properties"]["analysis"]["properties"]["variants"]["items"]
    variants = schema["properties"]["analysis"]["properties"]["variants"]["items"]["enum"]
    assert len(variants) == len(catalog.MASKING_NAMES) * len(catalog.DEPENDENCY_ESTIMATOR_NAMES)
    assert {"patch:k3", "grey:k3", "noise:k3", "blur:k3", "patch:kl"} <= set(variants)


def test_lmms_eval_group_is_the_papers_avg_set_and_every_benchmark_has_its_task():
    group = yaml.safe_load((ROOT / "benchmarks" / "vppo_all.yaml").read_text())
    assert group["task"] == [f"vppo_{key}" for key in PAPER_AVG]
    assert group["aggregate_metric_list"][0]["weight_by_size"] is False  # the unweighted mean: the paper's Avg
    for bench in catalog.BENCHMARKS:
        task = yaml.safe_load((ROOT / "benchmarks" / bench.key / f"{bench.task}.yaml").read_text()
                              .replace("!function", "").replace("include:", "include_:"))
        assert (task["task"], task["task_alias"]) == (bench.task, bench.paper_name)


def test_no_list_of_method_names_outside_the_registry():
    """The ablation presets' names appear in code only in the registry (configs choose methods; tests use them)."""
    code = [*(ROOT / "vppo").rglob("*.py"), *(ROOT / "workflow" / "rules").glob("*.smk"),
            ROOT / "workflow" / "schemas" / "config.schema.yaml"]
    copies = [str(p.relative_to(ROOT)) for p in code if p.name != "catalog.py"
              and re.search(r"vppo_t(as|gf)_only", p.read_text())]
    assert copies == []
    from vppo.training.cli import configure
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    assert next(a for a in parser._actions if a.dest == "method").help == method_grammar(trained_only=True)
    assert catalog.UNTRAINED_METHODS == ("base",) and set(METHOD_PRESETS) <= set(catalog.method_names())


def test_every_dependency_choice_has_one_vppo_preset_and_every_method_a_description():
    """vppo_exact_kl, vppo_grey, vppo_noise, vppo_blur: the published vppo with one choice of the dependency pass
    changed, one preset per non-default choice; the registry's torch-free name lists are the real registries'."""
    import dataclasses

    from vppo.algorithm import DEPENDENCY_ESTIMATORS
    from vppo.masking import MASKING_STRATEGIES

    assert catalog.DEPENDENCY_ESTIMATOR_NAMES == tuple(DEPENDENCY_ESTIMATORS)
    assert catalog.MASKING_NAMES == tuple(MASKING_STRATEGIES)
    published = METHOD_PRESETS["vppo"]
    assert (published.dependency_estimator, published.masking) == ("k3", "patch")
    variants = {(p.dependency_estimator, p.masking): name for name, p in METHOD_PRESETS.items()
                if (p.dependency_estimator, p.masking) != ("k3", "patch")}
    assert variants == {("kl", "patch"): "vppo_exact_kl", ("k3", "grey"): "vppo_grey", ("k3", "noise"): "vppo_noise",
                        ("k3", "blur"): "vppo_blur"}
    for name in variants.values():
        assert dataclasses.replace(METHOD_PRESETS[name], name="vppo", dependency_estimator="k3",
                                   masking="patch") == published
        assert catalog.parse_method(name, trained_only=True) == (name, None) and name in method_grammar()
        assert name not in catalog.METHOD_PAPER_NAMES  # the paper has no such row
    assert list(catalog.METHOD_DESCRIPTIONS) == catalog.method_names()
    assert all(f"  {name} " in catalog.method_descriptions() for name in catalog.method_names())


def test_default_methods_of_every_table_parse_and_the_registry_is_torch_free():
    for table in TABLES.values():
        for method in table.default_methods:
            catalog.parse_method(method)
        assert table.paper_model in (*PAPER_MODELS, catalog.NO_PAPER_MODEL) and catalog.TABLE_NAME.match(table.name)
    assert get_method("vppo_k0.3").keep_ratio == 0.3
    done = subprocess.run([sys.executable, "-c", "import sys, vppo.catalog, vppo.reference; "
                           "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))"],
                          cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]", done.stderr


# -------------------------------------------------------------------------- the DAG, from the registry alone

def add_to_registry(repo: Path) -> None:
    """A throwaway method preset, a ninth benchmark and a table named with "_", as a user adds them."""
    registry = repo / "vppo" / "catalog.py"
    text = registry.read_text()
    for anchor, addition in (
        ('        MethodPreset("vppo_tgf_only", use_tgf=True, use_tas=False),\n',
         '        MethodPreset("vppo_throwaway", use_tgf=True, use_tas=True, keep_ratio=0.3),\n'),
        ("EXTRA_BENCHMARKS: tuple[Benchmark, ...] = (", f"\n    {NINTH!r},\n"),
        ('              "qwen2.5-vl-7b"),\n', f"        {MINI!r},\n"),
    ):
        assert text.count(anchor) == 1, anchor
        text = text.replace(anchor, anchor + addition)
    registry.write_text(text)
    # The task folder, generated from the registry line; the data source is the fixtures (generated for every
    # benchmark).
    written = subprocess.run([sys.executable, "-m", "vppo", "tasks"], cwd=repo, capture_output=True, text=True,
                             env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    assert written.returncode == 0 and (repo / "benchmarks" / NINTH.key / f"{NINTH.task}.yaml").is_file(), written.stderr
    (repo / "results" / "reference" / "paper_mini_study_7b.csv").write_text(
        f"model,method,{NINTH.paper_name},Avg\nQwen2.5-VL-7B,vppo,50.0,57.5\n")


def test_a_method_a_ninth_benchmark_and_a_table_join_the_default_dag_from_the_registry(tmp_path):
    repo = copy_checkout(tmp_path / "repo")
    add_to_registry(repo)
    config = yaml.safe_load((repo / "workflow" / "config" / "default.yaml").read_text())
    config["benchmarks"].append(NINTH.key)
    config["models"]["tiny"]["methods"].append("vppo_throwaway")
    config["tables"]["mini_study"] = {"model": "tiny", "paper_model": "qwen2.5-vl-7b", "methods": ["base", "vppo_throwaway"]}
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(edited)],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    jobs = planned_jobs(output)
    assert {"model": "tiny", "method": "vppo_throwaway"} in [j["wildcards"] for j in jobs if j["rule"] == "train"]
    assert {"table": "mini_study"} in [j["wildcards"] for j in jobs if j["rule"] == "table"]
    assert rule_counts(jobs)["table"] == 4 and rule_counts(jobs)["eval_benchmarks"] == 8
    for path in ("results/eval/tiny/vppo_throwaway/geo3k_copy.json", "results/eval/tiny/base/geo3k_copy.json",
                 "results/tables/mini_study.md"):
        assert path in output
    table_job = [b for b in re.split(r"\n(?=rule \w+:)", output) if b.startswith("rule table:") and "table=mini_study" in b]
    assert len(table_job) == 1 and "results/eval/tiny/vppo_throwaway/geo3k_copy.json" in table_job[0]
    # The preset is what training runs, and the data preparer knows the benchmark (from the same registry).
    probe = ("import json; from vppo.catalog import get_method, resolve_benchmarks; "
             "from vppo.data.llamafactory import DATASET_NAMES; "
             "print(json.dumps([get_method('vppo_throwaway').keep_ratio, [b.key for b in resolve_benchmarks('all')], "
             f"DATASET_NAMES['{NINTH.key}']]))")
    probed = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True,
                            env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})
    keep_ratio, supported, source_name = json.loads(probed.stdout)
    assert (keep_ratio, NINTH.key in supported, source_name) == (0.3, True, NINTH.source_name), probed.stderr
    # Its fixture data is prepared and lmms-eval finds its task (not only the plan knows it).
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    prepared = subprocess.run([sys.executable, "-m", "vppo", "prepare-data", "eval", "--source", "fixtures", "--out",
                               str(tmp_path / "data"), "--option", f"benchmarks=geo3k,{NINTH.key}", "--option", "n_rows=1"],
                              cwd=repo, capture_output=True, text=True, env=env)
    assert prepared.returncode == 0, prepared.stderr
    assert json.loads((tmp_path / "data" / f"{NINTH.key}.json").read_text())[0]["messages"]
    tasks = ("from lmms_eval.tasks import TaskManager; "
             "print('vppo_geo3k_copy' in TaskManager(include_path='benchmarks', include_defaults=False).all_subtasks)")
    found = subprocess.run([sys.executable, "-c", tasks], cwd=repo, capture_output=True, text=True, env=env)
    assert found.stdout.strip().splitlines()[-1:] == ["True"], found.stderr[-2000:]


def test_train_nodes_and_gpus_have_one_home_the_recipe(tmp_path):
    """The rules ask Slurm for the recipe's layout (a train_resources.nodes key is refused: tests/test_workflow_plan.py)."""
    repo = copy_checkout(tmp_path / "repo")
    recipe = repo / "vppo" / "training" / "recipes" / "32b.yaml"
    recipe.write_text(recipe.read_text().replace("num_nodes: 4\n", "num_nodes: 2\n"))
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--profile", "slurm", "--sdm",
                           "env-modules", "--config", "preset=paper", "--", "results/train/qwen2.5-vl-32b/vppo"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    train = [j for j in planned_jobs(done.stdout + done.stderr) if j["rule"] == "train"]
    assert [(j["resources"]["nodes"], j["resources"]["gres"], j["resources"]["tasks"]) for j in train] == [("2", "gpu:8", "2")]
