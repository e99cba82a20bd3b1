"""Evaluation data in chamber111/VPPO-Eval's real layout (a LLaMA-Factory data folder): every benchmark found by its
LLaMA-Factory name, every row kept and keyed by its index, every image resolved the way PAPO-Eval resolves it;
broken data stops `prepare-data` with one line; the hub path runs the same importer."""

from __future__ import annotations

import json
import shutil

import pytest

from vppo.catalog import PAPER_BENCHMARKS as BENCHMARKS  # the eight: what "paper" (the default) names
from vppo.cli import main
from vppo.data.eval_data import EvalDataError, prepare_eval_data, scan_benchmark
from vppo.data.eval_fixtures import write_llamafactory_fixtures
from vppo.data.llamafactory import DATASET_NAMES

N_ROWS = 7  # every fixture image size and mode at least once, plus one row with an empty answer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_llamafactory_fixtures(tmp_path_factory.mktemp("vppo-eval"), n_rows=N_ROWS, plant_empty_answer=True)


def _prepare(argv, capsys):
    code = main(["prepare-data", "eval", *argv])
    return code, capsys.readouterr().err


def test_the_fixture_folder_is_the_vppo_eval_layout(source):
    for name in DATASET_NAMES.values():
        rows = json.loads((source / "data" / "vppo" / f"{name}.json").read_text())
        assert set(rows[0]) == {"messages", "images"}
        assert rows[0]["images"] == [f"./data/images/{name}/0000.png"]
        assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    info = json.loads((source / "data" / "dataset_info.json").read_text())
    assert info["hiyouga_geometry3k"]["file_name"] == "vppo/hiyouga_geometry3k.json"


@pytest.mark.parametrize("as_data_dir", [False, True])
def test_prepare_data_imports_all_eight_benchmarks_with_every_row_and_image(source, tmp_path, capsys, as_data_dir):
    folder = source / "data" if as_data_dir else source
    code, text = _prepare(["--source", str(folder), "--out", str(tmp_path / "out"), "--option",
                           f"expected_rows={N_ROWS + 1}"], capsys)
    assert code == 0, text
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {b.key: f"data/vppo/{DATASET_NAMES[b.key]}.json" for b in BENCHMARKS}
    for bench in BENCHMARKS:
        stored = json.loads((source / "data" / "vppo" / f"{DATASET_NAMES[bench.key]}.json").read_text())
        scan = scan_benchmark(out, bench.key)
        assert [r.row_id for r in scan.rows] == [str(i) for i in range(N_ROWS + 1)]  # nothing dropped
        assert [r.prompt for r in scan.rows] == [row["messages"][0]["content"] for row in stored]
        assert scan.rows[-1].answer == "" and [b.row_id for b in scan.bad] == [str(N_ROWS)]
        for row, local in zip(stored, scan.rows):
            (reference,) = row["images"]
            (path,) = local.images
            assert open(path, "rb").read() == (source / reference).read_bytes()
        assert manifest["benchmarks"][bench.key]["rows"] == N_ROWS + 1


def test_a_missing_image_stops_with_benchmark_row_and_path(source, tmp_path, capsys):
    broken = tmp_path / "src"
    shutil.copytree(source, broken)
    (broken / "data" / "images" / "MathLLMs_MathVision" / "0003.png").unlink()
    code, text = _prepare(["--source", str(broken), "--out", str(tmp_path / "out"),
                           "--option", f"expected_rows={N_ROWS + 1}"], capsys)
    assert code == 2 and len(text.strip().splitlines()) == 1
    assert text.startswith("vppo prepare-data: mathvision (data/vppo/MathLLMs_MathVision.json) row 3: missing image")
    assert str(broken / "data" / "images" / "MathLLMs_MathVision" / "0003.png") in text
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_unreadable_image_stops_too(source, tmp_path, capsys):
    broken = tmp_path / "src"
    shutil.copytree(source, broken)
    (broken / "data" / "images" / "hiyouga_geometry3k" / "0001.png").write_bytes(b"not a png")
    code, text = _prepare(["--source", str(broken), "--out", str(tmp_path / "out"),
                           "--option", f"expected_rows={N_ROWS + 1}"], capsys)
    assert code == 2 and "geo3k (data/vppo/hiyouga_geometry3k.json) row 1: unreadable image" in text


def test_an_unknown_file_name_is_listed_and_can_be_mapped(source, tmp_path, capsys):
    renamed = tmp_path / "src"
    shutil.copytree(source, renamed)
    (renamed / "data" / "dataset_info.json").unlink()
    (renamed / "data" / "vppo" / "PAPO_MMK12.json").rename(renamed / "data" / "vppo" / "FanqingM_MMK12.json")
    code, text = _prepare(["--source", str(renamed), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "no file for mmk12 (PAPO_MMK12)" in text and "data/vppo/FanqingM_MMK12.json" in text
    code, text = _prepare(["--source", str(renamed), "--out", str(tmp_path / "b"), "--option", "name_map_mmk12="
                           "FanqingM_MMK12", "--option", f"expected_rows={N_ROWS + 1}"], capsys)
    assert code == 0, text


def test_real_data_must_have_the_protocol_row_counts(source, tmp_path, capsys):
    code, text = _prepare(["--source", str(source), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "rows, expected 601" in text and len(text.strip().splitlines()) == 1


def test_the_hub_source_downloads_then_runs_the_same_importer(source, tmp_path, monkeypatch):
    """Only the network is replaced: the download lands the fixture folder where snapshot_download would."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, repo_type, revision, local_dir):
        calls.append((repo_id, repo_type, revision))
        shutil.copytree(source, local_dir)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub = prepare_eval_data("hub", tmp_path / "hub", expected_rows=N_ROWS + 1, revision=1234)
    local = prepare_eval_data(str(source), tmp_path / "local", expected_rows=N_ROWS + 1)
    assert calls == [("chamber111/VPPO-Eval", "dataset", "1234")]
    for bench in BENCHMARKS:
        assert (hub / f"{bench.key}.json").read_text() == (local / f"{bench.key}.json").read_text()
    hub_manifest, local_manifest = (json.loads((d / "manifest.json").read_text()) for d in (hub, local))
    assert hub_manifest["revision"] == "1234" and hub_manifest["sha256"] == local_manifest["sha256"]


def test_fixtures_source_goes_through_the_importer(tmp_path):
    out = prepare_eval_data("fixtures", tmp_path / "out", n_rows=2, benchmarks="geo3k", plant_empty_answers=1)
    assert (out / "_fixtures" / "data" / "vppo" / "hiyouga_geometry3k.json").is_file()
    rows = json.loads((out / "geo3k.json").read_text())
    assert [r["source_images"] for r in rows] == [["./data/images/hiyouga_geometry3k/0000.png"],
                                                  ["./data/images/hiyouga_geometry3k/0001.png"],
                                                  ["./data/images/hiyouga_geometry3k/0000.png"]]
    with pytest.raises(EvalDataError, match="name_map_nope"):
        prepare_eval_data("fixtures", tmp_path / "x", n_rows=1, name_map_nope="X")


def test_an_option_the_source_does_not_read_is_refused_before_anything_is_written(tmp_path):
    """family draws the mini task's pictures; on the fixtures it once changed nothing but the manifest's word."""
    cases = [("fixtures", {"family": "qwen3-vl"}, "--option family: not read by source 'fixtures'"),
             ("mini", {"seed": 3}, "--option seed: not read by source 'mini'"),
             ("hub", {"n_rows": 2}, "--option n_rows: not read by source 'hub'"),
             (str(tmp_path), {"family": "qwen3-vl"}, "--option family: not read by a folder source")]
    for source, options, needle in cases:
        with pytest.raises(EvalDataError, match=needle):
            prepare_eval_data(source, tmp_path / "out", **options)
        assert not (tmp_path / "out").exists()
    with pytest.raises(EvalDataError, match="eval data source 'fixtures; echo': expected"):  # a bad source first
        prepare_eval_data("fixtures; echo", tmp_path / "out", n_rows=1)
