"""The eight task folders under benchmarks/: lmms-eval indexes them from our include path, loads them offline
from the fixture layout, and their YAML alone already holds the protocol (no lmms-eval default changes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vppo.catalog import BENCHMARK_BY_KEY, BENCHMARKS, PAPER_AVG
from vppo.data.eval_data import write_fixtures
from vppo.evaluation import tasklib
from vppo.evaluation.protocol import PROTOCOL_SAMPLING, Sampling
from vppo.evaluation.runner import FILTER_NAME, apply_overrides, default_tasks_dir, protocol_violations

TASKS = [b.task for b in BENCHMARKS]  # every supported task folder
GROUP = [BENCHMARK_BY_KEY[k].task for k in PAPER_AVG]  # the group: the paper's Avg set


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("eval-data"), n_rows=3, plant_empty_answer=True)


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(default_tasks_dir()), include_defaults=False)


@pytest.fixture(scope="module")
def geo3k_task(task_manager, eval_data):
    mp = pytest.MonkeyPatch()
    mp.setenv(tasklib.DATA_ENV, str(eval_data))
    try:
        yield task_manager.load_task_or_group(["vppo_geo3k"], task_type="chat")["vppo_geo3k"]
    finally:
        mp.undo()


def test_lmms_eval_lists_all_eight_tasks_and_the_group(task_manager):
    assert set(TASKS) <= set(task_manager.all_subtasks)
    assert "vppo_all" in task_manager.all_groups
    from lmms_eval import utils

    group = utils.load_yaml_config(str(default_tasks_dir() / "vppo_all.yaml"), mode="simple")
    assert group["task"] == GROUP


def test_task_files_alone_hold_the_protocol(geo3k_task):
    assert protocol_violations(geo3k_task, PROTOCOL_SAMPLING) == []
    assert geo3k_task.config.generation_kwargs["until"] == []


def test_overrides_change_k_and_tokens_and_the_check_catches_drift(geo3k_task):
    from lmms_eval.filters import build_filter_ensemble

    sampling = Sampling(max_new_tokens=16, n=4)
    apply_overrides(geo3k_task, sampling)
    try:
        assert protocol_violations(geo3k_task, sampling) == []
        assert protocol_violations(geo3k_task, PROTOCOL_SAMPLING)  # now differs from the paper's protocol
        geo3k_task.set_config("reasoning_tags", [["<think>", "</think>"]])
        geo3k_task._filters = [build_filter_ensemble("none", [["take_first", None]])]  # lmms-eval's default
        problems = " ".join(protocol_violations(geo3k_task, sampling))
        assert "reasoning_tags" in problems and "filters" in problems
    finally:
        geo3k_task.set_config("reasoning_tags", "none")
        apply_overrides(geo3k_task, PROTOCOL_SAMPLING)
    assert geo3k_task._filters[0].name == FILTER_NAME


def test_docs_keep_the_stored_prompt_and_every_row(geo3k_task, eval_data):
    docs = geo3k_task.test_docs()
    assert [d["row_id"] for d in docs] == ["0", "1", "2", "3"]  # keyed by index; the empty answer stays in
    import json

    stored = json.loads((Path(eval_data) / "geo3k.json").read_text())
    assert docs[0]["prompt"] == stored[0]["messages"][0]["content"]
    assert docs[0]["answer"] == stored[0]["messages"][1]["content"]
    assert docs[3]["answer"] == ""
    reasons = {b.row_id: b.reason for b in tasklib.bad_rows(eval_data, "geo3k")}
    assert set(reasons) == {"3"} and reasons["3"].startswith("empty answer")


def test_images_replace_placeholders_in_place_and_are_resized(geo3k_task):
    doc = dict(geo3k_task.test_docs()[1])  # a 20x24 palette image: under 32*32, upscaled, then RGB
    doc["prompt"] = "A<image>B<image>C"
    doc["image_paths"] = [doc["image_paths"][0]] * 2
    content = tasklib.doc_to_messages(doc)[0]["content"]
    assert [p["type"] for p in content] == ["text", "image", "text", "image", "text"]
    assert content[1]["url"].size == (29, 35) and content[1]["url"].mode == "RGB"
    doc["prompt"] = "no placeholder"
    assert [p["type"] for p in tasklib.doc_to_messages(doc)[0]["content"]] == ["image", "image", "text"]
    doc["prompt"] = "one <image> only"
    with pytest.raises(ValueError, match="placeholders"):
        tasklib.doc_to_messages(doc)


def test_missing_data_variable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(tasklib.DATA_ENV, raising=False)
    with pytest.raises(tasklib.TaskDataError, match=tasklib.DATA_ENV):
        tasklib.data_files("geo3k")
    monkeypatch.setenv(tasklib.DATA_ENV, str(tmp_path))
    with pytest.raises(tasklib.TaskDataError, match="geo3k.json"):
        tasklib.data_files("geo3k")


def test_rows_are_keyed_by_index_whatever_ids_they_carry(tmp_path):
    import json

    from vppo.data.eval_data import scan_benchmark

    root = write_fixtures(tmp_path, n_rows=3, benchmarks=[b for b in BENCHMARKS if b.key == "geo3k"])
    rows = json.loads((root / "geo3k.json").read_text())
    rows[0]["id"] = rows[2]["id"] = "same"
    rows.append({**rows[1], "id": None})
    (root / "geo3k.json").write_text(json.dumps(rows))
    scan = scan_benchmark(root, "geo3k")
    assert [r.row_id for r in scan.rows] == ["0", "1", "2", "3"] and scan.bad == []


def test_an_image_removed_after_preparation_stops_the_task(geo3k_task, eval_data, tmp_path, monkeypatch):
    import shutil

    from vppo.data.eval_data import EvalDataError

    copy = tmp_path / "data"
    shutil.copytree(eval_data, copy)
    (copy / "images" / "geo3k" / "hiyouga_geometry3k" / "0001.png").unlink()
    monkeypatch.setenv(tasklib.DATA_ENV, str(copy))
    with pytest.raises(EvalDataError, match=r"geo3k \(.*\) row 1: missing image"):
        tasklib.docs_processor("geo3k")(geo3k_task.dataset["test"])


# ------------------------------------------------------------------ the folders, generated from the registry

def test_the_committed_task_folders_are_what_the_registry_generates():
    from vppo.evaluation.taskfiles import differences

    assert differences(default_tasks_dir()) == [], "run `vppo tasks` and commit benchmarks/"


def test_a_new_benchmark_is_a_registry_line_and_vppo_tasks(tmp_path, monkeypatch, capsys):
    import shutil

    from lmms_eval.tasks import TaskManager

    from vppo.catalog import Benchmark
    from vppo.cli import main
    from vppo.evaluation import taskfiles

    tasks = tmp_path / "benchmarks"
    shutil.copytree(default_tasks_dir(), tasks)
    (tasks / "geo3k" / "vppo_geo3k.yaml").write_text((tasks / "geo3k" / "vppo_geo3k.yaml").read_text() + "# hand edit\n")
    assert main(["tasks", "--tasks-dir", str(tasks), "--check"]) == 1  # an edited folder is found ...
    assert "vppo_geo3k.yaml: differs" in capsys.readouterr().out
    ninth = Benchmark("geo3k_copy", "Geo3k-copy", 601, "number", "hiyouga_geometry3k_copy")
    monkeypatch.setattr(taskfiles, "BENCHMARKS", (*BENCHMARKS, ninth))
    monkeypatch.setattr(taskfiles, "BENCHMARK_BY_KEY", {**BENCHMARK_BY_KEY, ninth.key: ninth})
    assert main(["tasks", "--tasks-dir", str(tasks)]) == 0  # ... and rewritten, with the new benchmark's folder
    assert taskfiles.differences(tasks) == [] and (tasks / ninth.key / "utils.py").is_file()
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    assert ninth.task in manager.all_subtasks and manager.all_groups == ["vppo_all"]
    (tasks / "geo3k" / "utils.py").write_text("# a file vppo tasks did not write\n")
    assert main(["tasks", "--tasks-dir", str(tasks)]) == 2  # never replaced: one line, exit 2
    assert "not written by `vppo tasks`" in capsys.readouterr().err
