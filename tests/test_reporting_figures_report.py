"""Figures and the HTML report from synthetic inputs that follow the stage contracts (issue 5)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from vppo.catalog import PAPER_BENCHMARKS as BENCHMARKS  # the eight: what "paper" (the default) names
from vppo.cli import main as vppo_main
from vppo.reporting import cost
from vppo.reporting.results_io import ResultsError, load_training_log
from doubles.reporting_inputs import write_analysis, write_eval_result, write_training_log

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
KEYS = [b.key for b in BENCHMARKS]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 10_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A complete smoke-like run: three methods evaluated (dapo misses geo3k), logs, two analyses, costs."""
    root = tmp_path_factory.mktemp("run")
    for m, (method, acc) in enumerate((("grpo", 40.0), ("dapo", 45.0), ("vppo", 50.0))):
        for i, key in enumerate(KEYS):
            if (method, key) != ("dapo", "geo3k"):
                extra = {"checkpoint": f"ckpt/{EVIL}"} if method == "vppo" else {}
                write_eval_result(root / "eval", "tiny", method, key, acc + i, 1.0 + 0.1 * m, **extra)
        write_training_log(root / "train", "tiny", method, steps=6)
    for method in ("dapo", "vppo"):
        write_analysis(root / "analysis", "tiny", method, seed=len(method))
    # a model-level analysis beside the per-method ones (vppo gradient-variance): no dependency figure, no error
    (root / "analysis" / "tiny" / "gradient_variance.json").write_text('{"schema": "vppo.gradient_variance/1"}\n')
    # vppo analyze --variants output beside the analyses: another schema, never read as an analysis
    (root / "analysis" / "tiny" / "vppo.variants.json").write_text('{"schema": "vppo.analysis_variants/1"}')
    return root


def _figures(root: Path, out: Path, *extra: str) -> int:
    return vppo_main(["figures", "--train-root", str(root / "train"), "--eval-root", str(root / "eval"),
                      "--analysis-root", str(root / "analysis"), "--out", str(out), "--reference-dir",
                      str(REFERENCE), "--paper-model", "tiny=qwen2.5-vl-7b", "--label", "SMOKE RUN", *extra])


@pytest.fixture(scope="module")
def figures_dir(run_dir):
    out = run_dir / "figures"
    assert _figures(run_dir, out) == 0
    return out


def test_complete_inputs_give_every_figure_with_its_inputs(figures_dir, run_dir):
    index = json.loads((figures_dir / "index.json").read_text())
    files = {f["file"]: f for f in index["figures"]}
    assert set(files) == {"training_tiny.png", "dependency_tiny_dapo.png", "dependency_tiny_vppo.png",
                          "benchmarks_tiny.png"}
    assert all(_png_ok(figures_dir / name) for name in files)
    assert files["training_tiny.png"]["methods"] == ["grpo", "dapo", "vppo"]
    assert str(run_dir / "analysis" / "tiny" / "vppo.json") in files["dependency_tiny_vppo.png"]["inputs"]
    assert len(files["benchmarks_tiny.png"]["inputs"]) == 3 * 8 - 1
    assert files["benchmarks_tiny.png"]["paper_model"] == "qwen2.5-vl-7b"
    assert index["label"] == "SMOKE RUN" and index["errors"] == []


def test_partial_inputs_skip_with_a_note_and_never_crash(tmp_path):
    write_eval_result(tmp_path / "eval", "tiny", "vppo", "geo3k", 30.0, 2.0)  # one cell, nothing else
    log = write_training_log(tmp_path / "train", "tiny", "dapo", steps=3)  # alpha null all along
    out = tmp_path / "figures"
    assert vppo_main(["figures", "--train-root", str(tmp_path / "train"), "--eval-root", str(tmp_path / "eval"),
                      "--out", str(out), "--methods", "dapo,vppo"]) == 0  # no analysis root given
    index = json.loads((out / "index.json").read_text())
    assert {f["file"] for f in index["figures"]} == {"training_tiny.png", "benchmarks_tiny.png"}
    assert all(_png_ok(out / f["file"]) for f in index["figures"])
    reasons = " ".join(s["reason"] for s in index["skipped"])
    assert "no analysis root" in reasons and "training_log.jsonl" in reasons  # vppo has no log
    assert index["figures"][1]["methods_without_results"] == ["dapo"]
    assert load_training_log(log)["alpha_mean"].isna().all()


def test_malformed_input_is_named_and_the_rest_still_drawn(run_dir, tmp_path):
    bad = tmp_path / "run"
    bad.mkdir()
    for part in ("eval", "analysis"):
        (bad / part).symlink_to(run_dir / part)
    (bad / "train" / "tiny" / "vppo").mkdir(parents=True)
    (bad / "train" / "tiny" / "vppo" / "training_log.jsonl").write_text('{"step": 1, "reward": "high"}\n')
    assert _figures(bad, tmp_path / "figures") == 1
    index = json.loads((tmp_path / "figures" / "index.json").read_text())
    assert "line 1: field 'reward'" in index["errors"][0] and "training_log.jsonl" in index["errors"][0]
    assert {f["kind"] for f in index["figures"]} == {"token_dependency", "benchmark_bars"}


def _write_snakemake_benchmark(path: Path, seconds: float, extended: dict | None = None) -> None:
    """A benchmark file written by Snakemake's own writer (so our parser reads the real format)."""
    from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

    record = BenchmarkRecord()
    record.running_time, record.max_rss, record.cpu_time, record.data_collected = seconds, 512.0, seconds / 2, True
    record.max_vms = record.max_uss = record.max_pss = record.io_in = record.io_out = 1.0
    record.cpu_usage = seconds
    if extended:
        record.jobid, record.rule_name, record.threads, record.input, record.params = 1, "eval", 2, [], {}
        record.wildcards, record.resources = extended["wildcards"], extended["resources"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records([record], str(path), bool(extended))


@pytest.fixture(scope="module")
def cost_root(run_dir):
    root = run_dir / "logs" / "benchmarks"
    _write_snakemake_benchmark(root / "train" / "tiny" / "vppo.tsv", 3600.0)
    _write_snakemake_benchmark(root / "train" / "tiny" / "dapo.tsv", 1800.0)
    for key in ("mathverse", "geo3k"):
        _write_snakemake_benchmark(root / "eval" / "tiny" / "vppo" / f"{key}.tsv", 900.0, {
            "wildcards": {"model": "tiny", "method": "vppo", "benchmark": key},
            "resources": {"_cores": 2, "gres": "gpu:2", "nodes": 1}})
    _write_snakemake_benchmark(root / "prepare_data" / "eval.tsv", 10.0)
    return root


def test_cost_per_stage_and_cell_with_gpu_hours(cost_root):
    costs = cost.load_costs(cost_root, {"train": 8, "train/tiny/dapo": 4})
    per_cell = cost.cost_per_cell(costs).set_index(["stage", "model", "method"])
    assert per_cell.loc[("train", "tiny", "vppo"), "gpu_hours"] == pytest.approx(8.0)  # 1 h x 8 GPUs
    assert per_cell.loc[("train", "tiny", "dapo"), "gpu_hours"] == pytest.approx(2.0)  # most specific key
    assert per_cell.loc[("eval", "tiny", "vppo"), "seconds"] == pytest.approx(1800.0)
    assert per_cell.loc[("eval", "tiny", "vppo"), "gpu_hours"] == pytest.approx(1.0)  # gres gpu:2 from the TSV
    assert per_cell.loc[("train", "tiny", "vppo"), "max_rss_mb"] == pytest.approx(512.0)
    prepare = per_cell.loc[("prepare_data", "—", "—")]
    assert prepare["seconds"] == pytest.approx(10.0) and prepare.isna()["gpu_hours"]  # GPUs unknown: missing
    bad = cost_root.parent / "bad"
    (bad / "train").mkdir(parents=True)
    (bad / "train" / "x.tsv").write_text("seconds\n1\n")
    with pytest.raises(ResultsError, match=r"x\.tsv: field 's'"):
        cost.load_costs(bad)


@pytest.fixture(scope="module")
def report(run_dir, figures_dir, cost_root):
    tables = run_dir / "tables"
    for table, methods in (("main", "grpo,dapo,vppo"), ("ablation", "vppo,vppo_tas_only,dapo")):
        assert vppo_main(["tables", "--table", table, "--model", "tiny", "--paper-model", "qwen2.5-vl-7b",
                          "--methods", methods, "--eval-root", str(run_dir / "eval"), "--reference-dir",
                          str(REFERENCE), "--out", str(tables / table), "--label", f"SMOKE RUN {EVIL}"]) == 0
    out = run_dir / "report.html"
    assert vppo_main(["report", "--tables", str(tables), "--figures", str(figures_dir), "--eval-root",
                      str(run_dir / "eval"), "--out", str(out), "--cost-root", str(cost_root),
                      "--gpus-per-job", '{"train": 8}']) == 0
    return out.read_text()


def test_report_has_every_cells_provenance(report, run_dir):
    for path in sorted((run_dir / "eval").rglob("*.json")):
        data = json.loads(path.read_text())
        row = re.search(rf"<tr>(?:(?!</tr>).)*{re.escape(str(path))}(?:(?!</tr>).)*</tr>", report)
        assert row, path
        for value in (data["checkpoint_sha256"], data["data"]["sha256"], data["backend"], "torch 2.13.0",
                      "top_k=50", f"{data['accuracy']:.2f}", f"{data['stderr']:.2f}"):
            assert value in row.group(0), (path, value)
    assert "dapo</code> Geo3k" in report  # the missing cell is listed as missing


def test_report_escapes_text_and_embeds_figures(report):
    assert "<script>" not in report
    assert "SMOKE RUN &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "ckpt/&lt;script&gt;" in report
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)


def test_report_cost_section(report):
    section = report.split("Cost per stage and cell")[1]
    train_vppo = re.search(r"<td class=\"l\">train</td><td class=\"l\">tiny</td><td class=\"l\">vppo</td>.*?</tr>",
                           section).group(0)
    assert "1:00:00" in train_vppo and "8.000" in train_vppo
    assert "GPU count unknown for 1 of 5" in section


def test_report_can_link_figures_instead(run_dir, figures_dir, tmp_path):
    out = tmp_path / "site" / "report.html"
    (tmp_path / "no-tables").mkdir()  # a folder without tables (a folder that does not exist is refused)
    assert vppo_main(["report", "--tables", str(tmp_path / "no-tables"), "--figures", str(figures_dir), "--eval-root",
                      str(run_dir / "eval"), "--out", str(out), "--link-figures"]) == 0
    page = out.read_text()
    assert "base64" not in page and "No tables." in page
    links = re.findall(r'<img alt="[^"]+" src="([^"]+)"', page)
    assert len(links) == 4 and all((out.parent / link).resolve().is_file() for link in links)
