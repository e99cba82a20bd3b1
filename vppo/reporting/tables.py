"""The study's tables (``vppo.catalog.TABLES``: the paper's main, scaling and ablation, and the mini study's),
ours next to the paper's where it has numbers, as Markdown, CSV and LaTeX.

One long frame (:func:`build_table`) is the single source of all three formats and of the HTML report:
one row per (method, column) with our value and standard error, the paper's value and the difference,
and the provenance of the cell. A cell without a result file is missing (empty in CSV, "—" in Markdown
and HTML, "--" in LaTeX), never zero. Our Avg is the paper's: the mean over its Avg set
(``vppo.catalog.PAPER_AVG``, its eight benchmarks), computed only when all eight are present; its standard
error is sqrt(sum se_i^2) / 8 (benchmarks are independent). A supported benchmark outside that set is an extra
column, never in Avg.

CLI: ``vppo tables --table main --model tiny --paper-model qwen2.5-vl-7b --methods base,grpo,dapo,vppo
--eval-root results/eval --reference-dir results/reference --out results/tables/main --label "SMOKE RUN"``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from vppo.catalog import (AVG, AVG_NAME, NO_PAPER_MODEL, BENCHMARK_BY_KEY, METHOD_PAPER_NAMES, MODEL_PAPER_NAMES, PAPER_AVG, PAPER_MODELS,
                          TABLES, resolve_benchmarks)
from vppo.errors import require_dir
from vppo.evaluation.protocol import paper_average
from vppo.fileio import write_text_atomic
from vppo.reference import PaperReference, load_reference
from vppo.reporting.results_io import load_eval_frame

MISSING_MD = "—"
MISSING_TEX = "--"
#: Provenance columns copied from each cell's result file into the CSV.
PROVENANCE = ["n_questions", "n_samples", "k", "backend", "seed", "checkpoint_sha256", "data_sha256", "eval_file"]
#: Columns of the long CSV, in order.
COLUMNS = ["table", "label", "model", "model_name", "paper_model", "paper_model_name", "method", "paper_method",
           "benchmark", "benchmark_name", "ours", "stderr", "paper", "diff", "status", *PROVENANCE, "paper_source"]


def _joined(values) -> str:
    """Distinct values of a provenance field over the eight cells of an Avg, ';'-joined."""
    return ";".join(sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}))


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def build_table(table: str, model: str, paper_model: str | None, methods: list[str], benchmarks: list[str],
                cells: pd.DataFrame, reference: PaperReference | None, label: str = "") -> pd.DataFrame:
    """Long frame: per method, one row per benchmark in ``benchmarks`` then one ``avg`` row.

    ``cells`` is :func:`vppo.reporting.results_io.load_eval_frame` output. Our Avg is the paper's
    (:func:`vppo.evaluation.protocol.paper_average`): only when ``benchmarks`` hold the paper's whole Avg set and
    all its cells exist; other benchmarks in ``benchmarks`` are extra columns, outside Avg.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    source = reference.source(table, paper_model) if reference is not None and paper_model else None
    rows = []
    for method in methods:
        mine = cells[(cells["model"] == model) & (cells["method"] == method)].set_index("benchmark")
        scores, present = {}, []
        for bench in benchmarks:
            cell = mine.loc[bench] if bench in mine.index else None
            ours = None if cell is None else float(cell["ours"])
            se = None if cell is None else float(cell["stderr"])
            scores[bench] = (ours, se)
            if cell is not None and bench in PAPER_AVG:
                present.append(cell)
            provenance = {k: (None if cell is None else cell[k]) for k in PROVENANCE}
            rows.append(_row(table, label, model, paper_model, method, bench, BENCHMARK_BY_KEY[bench].paper_name,
                             ours, se, reference, source, provenance))
        avg, avg_se = paper_average(scores)
        provenance = {"n_questions": sum(int(c["n_questions"]) for c in present) if avg is not None else None,
                      "n_samples": sum(int(c["n_samples"]) for c in present) if avg is not None else None,
                      **{k: _joined(c[k] for c in present) or None
                         for k in ("k", "backend", "seed", "checkpoint_sha256", "data_sha256")},
                      "eval_file": None}
        rows.append(_row(table, label, model, paper_model, method, AVG, AVG_NAME, avg, avg_se, reference, source,
                         provenance))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("n_questions", "n_samples"):  # counts stay integers next to missing cells
        frame[column] = frame[column].astype("Int64")
    return frame


def _row(table, label, model, paper_model, method, bench, column, ours, se, reference, source, provenance) -> dict:
    paper = reference.value(table, paper_model, method, bench) if reference is not None and paper_model else None
    diff = ours - paper if ours is not None and paper is not None else None
    return {"table": table, "label": label, "model": model, "model_name": MODEL_PAPER_NAMES.get(model, model),
            "paper_model": paper_model, "paper_model_name": MODEL_PAPER_NAMES.get(paper_model, paper_model),
            "method": method, "paper_method": METHOD_PAPER_NAMES.get(method), "benchmark": bench,
            "benchmark_name": column, "ours": ours, "stderr": se, "paper": paper, "diff": diff,
            "status": "ok" if ours is not None else "missing", **provenance, "paper_source": source}


# ------------------------------------------------------------------------------------------ rendering

def wide_blocks(long: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """(column headers, one block per method: {method, paper_method, ours: [(v, se)], paper: [v], diff: [v],
    records: [the long-frame row of each column, for per-cell provenance]})."""
    headers = list(dict.fromkeys(long["benchmark_name"]))
    blocks = []
    for method, group in long.groupby("method", sort=False):
        by_col = {r["benchmark_name"]: r for r in group.to_dict("records")}
        paper_method = group["paper_method"].iloc[0]  # NaN in the frame where the paper has no such row
        blocks.append({"method": method, "paper_method": paper_method if isinstance(paper_method, str) else None,
                       "ours": [(_num(by_col[h]["ours"]), _num(by_col[h]["stderr"])) for h in headers],
                       "paper": [_num(by_col[h]["paper"]) for h in headers],
                       "diff": [_num(by_col[h]["diff"]) for h in headers],
                       "records": [by_col[h] for h in headers]})
    return headers, blocks


#: Methods whose training settings are ours, not the authors' (their repository ships VPPO scripts only).
BASELINE_NOTES = {
    "grpo": ("grpo settings are ours (no official GRPO config exists): the VPPO recipe without DAPO's clip-higher "
             "and online filtering (clip 0.2/0.2), keeping dual clip, token-mean, entropy 0.06 and no KL, so that "
             "grpo and dapo differ only in those two tricks; stock EasyR1 GRPO would add a KL loss and clip 0.2/0.3."),
    "dapo": ("dapo settings are ours (no official DAPO config exists): the VPPO recipe with TGF and TAS off, "
             "the paper's own ablation row."),
}


def describe(long: pd.DataFrame) -> dict[str, str]:
    """Title, label, comparison sentence and notes shared by every format (plain text, unescaped)."""
    first = long.iloc[0]
    paper_name = first["paper_model_name"] or "none"
    ours = first["model_name"] if first["model_name"] == first["model"] else f"{first['model_name']} [{first['model']}]"
    comparison = (f"Ours: {ours}; paper: {paper_name}"
                  + (f" (from {first['paper_source']})" if first["paper_source"] else "") + ".")
    notes = " ".join(BASELINE_NOTES[m] for m in dict.fromkeys(long["method"]) if m in BASELINE_NOTES)
    return {"title": f"{TABLES[first['table']].title}: avg@8 accuracy (%)", "label": first["label"] or "",
            "comparison": comparison, "notes": notes}


LEGEND = (f"Ours: value ± standard error over questions. Avg: the paper's, the mean of its {len(PAPER_AVG)} "
          f"benchmarks ({', '.join(BENCHMARK_BY_KEY[k].paper_name for k in PAPER_AVG)}; no other column), only "
          f"when all {len(PAPER_AVG)} are present; its standard error is sqrt(sum of se²)/{len(PAPER_AVG)}. "
          "Δ = ours − paper. Missing cells: not computed yet (ours) or not reported by the paper.")


def _fmt(value: float | None, missing: str, signed: bool = False) -> str:
    if value is None:
        return missing
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _md_escape(text: str) -> str:
    for char in "\\`*_|[]<>#":
        text = text.replace(char, "\\" + char)
    return text


def has_paper_rows(long: pd.DataFrame) -> bool:
    """False for a table of our own experiment (paper model "none"): it shows no paper or delta rows."""
    return bool(long["paper_model"].notna().any())


def to_markdown(long: pd.DataFrame) -> str:
    info, (headers, blocks) = describe(long), wide_blocks(long)
    lines = [f"# {_md_escape(info['title'])}", ""]
    if info["label"]:
        lines += [f"> **{_md_escape(info['label'])}**", ""]
    lines += [_md_escape(info["comparison"]), "",
              "| Method | Row | " + " | ".join(headers) + " |", "|---|---|" + "---:|" * len(headers)]
    has_paper = has_paper_rows(long)
    for block in blocks:
        ours = [f"{_fmt(v, MISSING_MD)} ± {_fmt(s, MISSING_MD)}" if v is not None else MISSING_MD for v, s in block["ours"]]
        paper_label = f"paper ({block['paper_method']})" if block["paper_method"] else "paper"
        lines.append(f"| `{block['method']}` | ours | " + " | ".join(ours) + " |")
        if not has_paper:
            continue
        lines.append(f"| | {paper_label} | " + " | ".join(_fmt(v, MISSING_MD) for v in block["paper"]) + " |")
        lines.append("| | Δ | " + " | ".join(_fmt(v, MISSING_MD, signed=True) for v in block["diff"]) + " |")
    lines += ["", _md_escape(LEGEND), *(["", "Note: " + _md_escape(info["notes"])] if info["notes"] else []),
              "", "## Provenance", "",
              "| Method | backend | k | seed | checkpoint sha256 | benchmarks present |", "|---|---|---|---|---|---|"]
    for method, group in long[long["benchmark"] != AVG].groupby("method", sort=False):
        ok = group[group["status"] == "ok"]
        shas = ", ".join(s[:12] for s in sorted(set(ok["checkpoint_sha256"].dropna())))
        lines.append(f"| `{method}` | {_joined(ok['backend']) or MISSING_MD} | {_joined(ok['k']) or MISSING_MD} | "
                     f"{_joined(ok['seed']) or MISSING_MD} | {shas or MISSING_MD} | {len(ok)} of {len(group)} |")
    return "\n".join(lines) + "\n"


_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIALS.get(char, char) for char in str(text))


def _tex_num(value: float | None, signed: bool = False) -> str:
    return MISSING_TEX if value is None else f"${_fmt(value, MISSING_TEX, signed)}$"


def to_latex(long: pd.DataFrame) -> str:
    info, (headers, blocks) = describe(long), wide_blocks(long)
    table = long["table"].iloc[0]
    caption = (rf"\textbf{{{tex_escape(info['label'])}}} " if info["label"] else "") + tex_escape(
        f"{info['title']}. {info['comparison']} {LEGEND}" + (f" Note: {info['notes']}" if info["notes"] else "")
    ).replace("±", r"$\pm$").replace("²", r"$^2$").replace(
        "Δ", r"$\Delta$").replace("−", "$-$")
    lines = ["% Generated by `vppo tables`; needs \\usepackage{booktabs} in the preamble.",
             *([f"% LABEL: {info['label']}"] if info["label"] else []),
             r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}",
             rf"\label{{tab:vppo-{table}}}", r"\begin{tabular}{ll" + "r" * len(headers) + "}", r"\toprule",
             "Method & & " + " & ".join(tex_escape(h) for h in headers) + r" \\", r"\midrule"]
    has_paper = has_paper_rows(long)
    for i, block in enumerate(blocks):
        ours = [MISSING_TEX if v is None else f"${v:.1f}\\pm{s:.1f}$" for v, s in block["ours"]]
        lines.append(f"{tex_escape(block['method'])} & ours & " + " & ".join(ours) + r" \\")
        if has_paper:
            lines.append(" & paper & " + " & ".join(_tex_num(v) for v in block["paper"]) + r" \\")
            lines.append(r" & $\Delta$ & " + " & ".join(_tex_num(v, signed=True) for v in block["diff"]) + r" \\")
        if i < len(blocks) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(long: pd.DataFrame) -> str:
    frame = long.copy()
    for column in ("ours", "stderr", "paper", "diff"):
        frame[column] = pd.to_numeric(frame[column]).round(4)
    return frame.to_csv(index=False, lineterminator="\n")


def write_table(long: pd.DataFrame, out_prefix: str | Path) -> list[Path]:
    """Write ``<prefix>.md``, ``<prefix>.csv`` and ``<prefix>.tex``."""
    prefix = Path(out_prefix)
    return [write_text_atomic(prefix.with_name(prefix.name + ".md"), to_markdown(long)),
            write_text_atomic(prefix.with_name(prefix.name + ".csv"), to_csv(long)),
            write_text_atomic(prefix.with_name(prefix.name + ".tex"), to_latex(long))]


# ------------------------------------------------------------------------------------------------ CLI

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", choices=list(TABLES), required=True, help="a table of vppo.catalog.TABLES")
    parser.add_argument("--model", required=True, help="model key of our results (path <eval-root>/<model>/...)")
    parser.add_argument("--paper-model", default=None,
                        help=f"the paper's model to compare with ({', '.join(PAPER_MODELS)}, or {NO_PAPER_MODEL}); default: the table's")
    parser.add_argument("--methods", default=None, help="comma-separated method keys (default: the table's)")
    parser.add_argument("--benchmarks", default="paper",
                        help="paper (default: the paper's Avg set), all (every supported benchmark) or comma-separated keys")
    parser.add_argument("--eval-root", required=True)
    parser.add_argument("--reference-dir", required=True)
    parser.add_argument("--out", required=True, help="output prefix: writes OUT.md, OUT.csv, OUT.tex")
    parser.add_argument("--label", default=None,
                        help="banner shown in every format (e.g. 'SMOKE RUN: tiny model vs the paper's 7B')")


def default_label(model: str, paper_model: str | None) -> str:
    """A banner for comparisons that are not like for like (our model is not the paper's)."""
    if paper_model is None or paper_model == model:
        return ""
    return (f"{MODEL_PAPER_NAMES.get(model, model)} compared with the paper's "
            f"{MODEL_PAPER_NAMES.get(paper_model, paper_model)}: not a like-for-like comparison")


def run(args: argparse.Namespace) -> int:
    require_dir(args.eval_root, "--eval-root")  # a mistyped root would give a table of empty cells
    require_dir(args.reference_dir, "--reference-dir")
    benchmarks = [b.key for b in resolve_benchmarks(args.benchmarks)]  # bad input: InputError (vppo.cli reports)
    spec = TABLES[args.table]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(spec.default_methods)
    paper_model = args.paper_model or spec.paper_model
    paper_model = None if paper_model == NO_PAPER_MODEL else paper_model
    reference = load_reference(args.reference_dir)
    cells = load_eval_frame(args.eval_root, [args.model], methods, benchmarks)
    label = args.label if args.label is not None else default_label(args.model, paper_model)
    long = build_table(args.table, args.model, paper_model, methods, benchmarks, cells, reference, label)
    paths = write_table(long, args.out)
    missing = long[long["status"] == "missing"]
    print(f"vppo tables: {args.table}: {len(long) - len(missing)} of {len(long)} cells present; wrote "
          + ", ".join(str(p) for p in paths))
    if paper_model is not None and reference.source(args.table, paper_model) is None:
        print(f"vppo tables: note: {args.reference_dir} has no paper row for {paper_model!r} in the "
              f"{args.table} table; paper columns are empty", file=sys.stderr)
    return 0
