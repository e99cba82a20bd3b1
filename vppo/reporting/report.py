"""``vppo report``: one self-contained HTML page with the tables, the figures, every cell's provenance and cost.

Figures are embedded as base64 PNG data URIs by default, so the page is a single file that can be mailed
or attached to a pull request; ``--link-figures`` links them relatively instead (smaller page, needs the
figures folder next to it). Every piece of text from an input goes through ``html.escape``.

Sections: tables (from ``<tables>/*.csv``, the long CSVs of ``vppo tables``; hovering a cell shows its
provenance), figures (``<figures>/index.json``, or every PNG when there is no index), provenance of every
result file under ``--eval-root`` (model, method, benchmark, value, stderr, backend, versions, sampling,
seed, limit, checkpoint and its sha256, data checksum, wall time, and for a converted checkpoint the tracking run
name of its training and the path of its model card), the missing cells of the tables, with
``--study`` the seed study (its table, and its training-curve and dependency figures where ``vppo study`` drew
them), and with ``--cost-root`` the cost per stage and cell from Snakemake ``benchmark:`` files (``vppo.reporting.cost``).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import time
from pathlib import Path

import pandas as pd

from vppo.errors import require_dir
from vppo.reporting import cost as cost_mod
from vppo.fileio import write_text_atomic
from vppo.reporting.results_io import ResultsError, load_eval_frame, read_json
from vppo.reporting.study_figures import CAPTIONS as STUDY_CAPTIONS
from vppo.catalog import TABLES
from vppo.reporting.tables import COLUMNS, LEGEND, describe, wide_blocks

MISSING = "—"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1400px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr.ours td{font-weight:600}tr.first td{border-top:2px solid #888}
td.missing{color:#999;background:#fafafa}.neg{color:#b00}.pos{color:#070}
.banner{background:#fff3cd;border:2px solid #e0a800;padding:.6em 1em;font-size:1.15em;font-weight:700;margin:1em 0}
.note{color:#555;font-size:13px}figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:13px;color:#444}code{font-size:12px}.scroll{overflow-x:auto}
"""


def esc(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 1, signed: bool = False) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def _td(text: str | None, cls: str = "", title: str = "") -> str:
    classes = " ".join(c for c in (cls, "missing" if text is None else "") if c)
    attrs = (f' class="{classes}"' if classes else "") + (f' title="{esc(title)}"' if title else "")
    return f"<td{attrs}>{esc(text) if text is not None else MISSING}</td>"


# ------------------------------------------------------------------------------------------- tables

def read_table_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"seed": str, "k": str, "checkpoint_sha256": str, "n_questions": "Int64",
                                     "n_samples": "Int64"})
    for column in COLUMNS:
        if column not in frame.columns:
            raise ResultsError(f"{path}: field '{column}': missing column (not a `vppo tables` CSV)")
    text = [c for c in COLUMNS if c not in ("ours", "stderr", "paper", "diff", "n_questions", "n_samples")]
    frame[text] = frame[text].astype(object).where(frame[text].notna(), None)
    return frame


def _cell_title(record: dict) -> str:
    keys = ("backend", "k", "seed", "n_questions", "checkpoint_sha256", "data_sha256", "eval_file", "paper_source")
    return "; ".join(f"{k}={record[k]}" for k in keys if record.get(k) is not None
                     and not (isinstance(record[k], float) and math.isnan(record[k])))


def table_html(long: pd.DataFrame, source: Path) -> str:
    info = describe(long)
    headers, blocks = wide_blocks(long)
    parts = [f"<h3>{esc(info['title'])} <span class=note>({esc(source.name)})</span></h3>"]
    if info["label"]:
        parts.append(f"<div class=banner>{esc(info['label'])}</div>")
    parts.append(f"<p class=note>{esc(info['comparison'])}</p><div class=scroll><table><tr><th class=l>Method</th>"
                 "<th class=l>Row</th>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
    for block in blocks:
        parts.append(f"<tr class='ours first'><td class=l><code>{esc(block['method'])}</code></td><td class=l>ours</td>"
                     + "".join(_td(f"{_num(v)} ± {_num(s)}" if v is not None else None, title=_cell_title(record))
                               for (v, s), record in zip(block["ours"], block["records"])) + "</tr>")
        paper_method = block["paper_method"]
        parts.append(f"<tr><td></td><td class=l>paper{' (' + esc(paper_method) + ')' if paper_method else ''}</td>"
                     + "".join(_td(_num(v)) for v in block["paper"]) + "</tr>")
        diffs = [_num(d, signed=True) for d in block["diff"]]
        parts.append("<tr><td></td><td class=l>Δ</td>" + "".join(
            _td(d, "neg" if d and d.startswith("-") else "pos" if d else "") for d in diffs) + "</tr>")
    parts.append(f"</table></div><p class=note>{esc(LEGEND)}</p>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ figures

def image_src(path: Path, report_path: Path, link: bool) -> str:
    """The PNG as a data URI, or (``link``) its path relative to the report."""
    if link:
        return os.path.relpath(path.resolve(), Path(report_path).resolve().parent)
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figures_html(figures_dir: Path, report_path: Path, link: bool) -> str:
    index_path = figures_dir / "index.json"
    if index_path.is_file():
        index = read_json(index_path)
        entries, skipped, errors = index.get("figures", []), index.get("skipped", []), index.get("errors", [])
    else:
        entries = [{"file": p.name, "kind": "figure", "inputs": []} for p in sorted(figures_dir.glob("*.png"))]
        skipped, errors = [], []
    parts = []
    for entry in entries:
        path = figures_dir / entry["file"]
        if not path.is_file():
            parts.append(f"<p class=note>{esc(entry['file'])}: listed in the index but not found</p>")
            continue
        src = image_src(path, report_path, link)
        inputs = "".join(f"<li><code>{esc(i)}</code></li>" for i in entry.get("inputs", []))
        caption = (f"<b>{esc(entry.get('kind'))}</b>, model <code>{esc(entry.get('model'))}</code>, methods "
                   f"{esc(', '.join(entry.get('methods', [])))}. Drawn from:<ul>{inputs}</ul>")
        parts.append(f"<figure><img alt=\"{esc(entry['file'])}\" src=\"{esc(src)}\"><figcaption>{caption}"
                     f"</figcaption></figure>")
    if skipped:
        parts.append("<p class=note>Not drawn:</p><ul class=note>" + "".join(
            f"<li>{esc(s.get('what'))}: {esc(s.get('reason'))}</li>" for s in skipped) + "</ul>")
    if errors:
        parts.append("<p class=note><b>Input errors:</b></p><ul class=note>" + "".join(
            f"<li>{esc(e)}</li>" for e in errors) + "</ul>")
    return "\n".join(parts) or "<p class=note>No figures.</p>"


# --------------------------------------------------------------------------------------- provenance

def _versions(text: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(json.loads(text).items()) if v is not None)


def _sampling(text: str) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(json.loads(text).items()))


PROVENANCE_HEADERS = ["model", "method", "benchmark", "accuracy (%)", "stderr", "questions", "samples", "k",
                      "backend", "versions", "sampling", "seed", "limit", "bad rows", "checkpoint",
                      "checkpoint sha256", "data sha256", "wall time", "created", "file", "tracking run", "model card"]


def checkpoint_tracking(checkpoint: str) -> tuple[str | None, str | None]:
    """(the tracking run name of the training behind a converted checkpoint, its model card's path), each None
    where the checkpoint is no `vppo convert` output (a base or released model) or lacks it."""
    from vppo.training.convert import MARKER
    from vppo.training.model_card import CARD_FILE

    folder = Path(checkpoint)
    marker, card = folder / MARKER, folder / CARD_FILE
    run_name = None
    if marker.is_file():
        try:
            run_name = (json.loads(marker.read_text()).get("card") or {}).get("run_name")
        except json.JSONDecodeError:
            raise ResultsError(f"{marker}: not valid JSON") from None
    return run_name, str(card) if card.is_file() and marker.is_file() else None


def provenance_html(cells: pd.DataFrame) -> str:
    if cells.empty:
        return "<p class=note>No result files.</p>"
    rows = []
    tracking = {checkpoint: checkpoint_tracking(checkpoint) for checkpoint in cells["checkpoint"].unique()}
    for r in cells.sort_values(["model", "method", "benchmark"]).to_dict("records"):
        values = [r["model"], r["method"], r["benchmark"], _num(r["ours"], 2), _num(r["stderr"], 2),
                  r["n_questions"], r["n_samples"], r["k"], r["backend"], _versions(r["versions"]),
                  _sampling(r["sampling"]), r["seed"], r["limit"], r["bad_rows"], r["checkpoint"],
                  r["checkpoint_sha256"], r["data_sha256"], cost_mod.hms(r["wall_time_s"]), r["created"],
                  r["eval_file"], *tracking[r["checkpoint"]]]
        rows.append("<tr>" + "".join(_td(None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v),
                                         "l" if i in (0, 1, 2, 9, 10, 14, 15, 16, 19, 20, 21) else "")
                                     for i, v in enumerate(values)) + "</tr>")
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in PROVENANCE_HEADERS) + "</tr>"
    return f"<div class=scroll><table>{head}{''.join(rows)}</table></div>"


def missing_html(tables: list[pd.DataFrame]) -> str:
    items = [f"<li>{esc(r['table'])}: <code>{esc(r['model'])}/{esc(r['method'])}</code> {esc(r['benchmark_name'])}</li>"
             for t in tables for r in t[t["status"] == "missing"].to_dict("records")]
    return f"<ul class=note>{''.join(items)}</ul>" if items else "<p class=note>None: every table cell is present.</p>"


# --------------------------------------------------------------------------------------------- cost

def cost_html(costs: pd.DataFrame) -> str:
    if costs.empty:
        return "<p class=note>No benchmark files found.</p>"
    per_cell = cost_mod.cost_per_cell(costs)
    headers = ["stage", "model", "method", "jobs", "runs", "wall time", "seconds", "CPU time (s)", "max RSS (MB)",
               "GPU-hours"]
    rows = ["<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for r in per_cell.to_dict("records"):
        rows.append("<tr>" + _td(r["stage"], "l") + _td(r["model"], "l") + _td(r["method"], "l") + _td(str(r["jobs"]))
                    + _td(str(r["runs"])) + _td(cost_mod.hms(r["seconds"])) + _td(_num(r["seconds"], 1))
                    + _td(_num(r["cpu_time_s"], 1)) + _td(_num(r["max_rss_mb"], 0)) + _td(_num(r["gpu_hours"], 3)) + "</tr>")
    totals = per_cell.groupby("stage").agg(seconds=("seconds", "sum"), gpu_hours=(
        "gpu_hours", cost_mod.sum_if_all_known)).reset_index()
    rows.append("<tr><th class=l colspan=10>Totals per stage</th></tr>")
    for r in totals.to_dict("records"):
        rows.append("<tr>" + _td(r["stage"], "l") + "<td></td><td></td><td></td><td></td>" + _td(cost_mod.hms(r["seconds"]))
                    + _td(_num(r["seconds"], 1)) + "<td></td><td></td>" + _td(_num(r["gpu_hours"], 3)) + "</tr>")
    unknown = costs[costs["gpus"].isna()]
    note = (f"<p class=note>GPU count unknown for {len(unknown)} of {len(costs)} benchmark files (GPU-hours shown as "
            f"{MISSING}); give --gpus-per-job or run Snakemake with --benchmark-extended.</p>" if len(unknown) else "")
    return f"<div class=scroll><table>{''.join(rows)}</table></div>{note}"


# ---------------------------------------------------------------------------------------------- page

def study_html(study_dir: Path, report_path: Path, link: bool = False) -> str:
    """The seed study (``vppo study``'s study.csv) as one HTML table, then the study's figures it drew (none when
    it was run without training logs or analyses)."""
    study_dir = Path(study_dir)
    path = study_dir / "study.csv"
    if not path.is_file():
        raise ResultsError(f"{path}: missing (the --study folder holds no `vppo study` output)")
    frame = pd.read_csv(path)
    shown = frame[["benchmark_name", "method", "seeds", "mean", "se_seeds", "vs_start", "vs_start_ci", "vs_baseline",
                   "vs_baseline_ci"]]
    return ("<p class=note>Mean and standard error over seeds; differences paired by seed with the half-width of "
            f"a 95% t interval (baseline: {esc(frame['baseline'].iloc[0])}).</p>"
            + shown.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.1f}", escape=True)
            + "".join(f"<figure><img alt=\"{esc(name)}\" src=\"{esc(image_src(study_dir / name, report_path, link))}\">"
                      f"<figcaption>{esc(caption)}</figcaption></figure>"
                      for name, caption in STUDY_CAPTIONS.items() if (study_dir / name).is_file()))


def build_report(tables_dir, figures_dir, eval_root, out, cost_root=None, gpu_mapping=None, label=None,
                 link_figures=False, study_dir=None) -> str:
    out = Path(out)
    tables_dir = Path(tables_dir) if tables_dir else None
    table_files = sorted(tables_dir.glob("*.csv")) if tables_dir and tables_dir.is_dir() else []
    tables = [read_table_csv(p) for p in table_files]
    known = list(TABLES)  # the registry's order: the paper's main, scaling, ablation, then any added table
    order = sorted(range(len(tables)), key=lambda i: (
        known.index(tables[i]["table"].iloc[0]) if len(tables[i]) and tables[i]["table"].iloc[0] in known
        else len(known), table_files[i].name))
    tables, table_files = [tables[i] for i in order], [table_files[i] for i in order]
    cells = load_eval_frame(eval_root)  # a missing root is an empty frame
    labels = [label] if label else sorted({t["label"].iloc[0] for t in tables if len(t) and t["label"].iloc[0]})
    sections = ["<h1>vppo-repro: results report</h1>"]
    sections += [f"<div class=banner>{esc(text)}</div>" for text in labels]
    sections.append(f"<p class=note>Generated {esc(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))} by "
                    f"<code>vppo report</code> from tables <code>{esc(tables_dir)}</code>, figures "
                    f"<code>{esc(figures_dir)}</code>, results <code>{esc(eval_root)}</code>"
                    + (f", cost <code>{esc(cost_root)}</code>" if cost_root else "") + ". Figures are "
                    + ("linked relatively." if link_figures else "embedded (this page is self-contained).") + "</p>")
    sections.append("<h2>Tables</h2>")
    sections += [table_html(t, p) for t, p in zip(tables, table_files) if len(t)] or ["<p class=note>No tables.</p>"]
    if study_dir:
        sections += ["<h2>Seed study</h2>", study_html(study_dir, out, link_figures)]
    sections.append("<h2>Figures</h2>")
    sections.append(figures_html(Path(figures_dir), out, link_figures) if figures_dir and Path(figures_dir).is_dir()
                    else "<p class=note>No figures folder.</p>")
    sections += ["<h2>Provenance of every result</h2>", provenance_html(cells), "<h3>Missing table cells</h3>",
                 missing_html(tables)]
    if cost_root:
        sections += ["<h2>Cost per stage and cell</h2>", cost_html(cost_mod.load_costs(cost_root, gpu_mapping))]
    page = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>vppo-repro report</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    write_text_atomic(out, page)
    return page


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="folder of `vppo tables` outputs (the CSVs are read)")
    parser.add_argument("--figures", required=True, help="folder of `vppo figures` outputs (index.json, PNGs)")
    parser.add_argument("--eval-root", required=True, help="results root <eval-root>/<model>/<method>/<benchmark>.json")
    parser.add_argument("--out", required=True, help="HTML file to write")
    parser.add_argument("--cost-root", default=None, help="Snakemake benchmark: files, <stage>/<model>/<method>...tsv")
    parser.add_argument("--gpus-per-job", default=None,
                        help='JSON (inline or a file): {"train": 8, "train/qwen2.5-vl-32b": 32, "*": 0}')
    parser.add_argument("--label", default=None, help="banner at the top (default: the tables' labels)")
    parser.add_argument("--study", default=None, help="folder of `vppo study` output (study.csv), shown as a section")
    parser.add_argument("--link-figures", action="store_true", help="link PNGs relatively instead of embedding")


def run(args: argparse.Namespace) -> int:
    for flag in ("tables", "figures", "eval_root", "cost_root", "study"):  # given folders must exist
        require_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
    build_report(args.tables, args.figures, args.eval_root, args.out, args.cost_root,
                 cost_mod.load_gpu_mapping(args.gpus_per_job), args.label, args.link_figures, args.study)
    print(f"vppo report: wrote {args.out}")
    return 0
