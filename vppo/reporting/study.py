"""``vppo study``: the seed study table of a preset that trains each method with several seeds (preset mini).

Each seed is one configured model (``mini_s0``, ``mini_s1``, ... : same base, ``models.<m>.seed``); its cells are
ordinary ``vppo eval`` results. Per benchmark and method the table shows the mean accuracy over seeds with its
standard error over seeds (sd / sqrt(n): seed-to-seed spread, not question sampling), and two paired
differences, seed by seed: against the warm start (the base checkpoint all seeds start from) and against the
baseline method (DAPO), each with a 95% confidence interval from Student's t over the seeds.

    vppo study --models mini_s0,mini_s1,mini_s2 --methods grpo,dapo,vppo --baseline dapo \\
        --start mini_s0/base --benchmarks mini_heldout,mini_control --eval-root results/eval --out results/study

Writes ``OUT/study.csv`` (long: one row per benchmark and method, per-seed values included) and ``OUT/study.md``;
with ``--train-root`` also the training curves with seed bands, and with ``--analysis-root`` the dependency
findings of the analysed checkpoints (:mod:`vppo.reporting.study_figures`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from vppo.catalog import BENCHMARK_BY_KEY, resolve_benchmarks
from vppo.errors import InputError, require_dir
from vppo.fileio import write_text_atomic
from vppo.reporting.results_io import eval_file, load_eval_json

#: Columns of ``study.csv``.
COLUMNS = ["benchmark", "benchmark_name", "method", "n_seeds", "seeds", "mean", "se_seeds", "vs_start", "vs_start_ci",
           "vs_baseline", "vs_baseline_ci", "start", "baseline"]


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean of a_i - b_i, half-width of its two-sided t confidence interval; None with fewer than 2 pairs)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, None
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))


def mean_and_se(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def accuracy(eval_root: Path, model: str, method: str, benchmark: str) -> float:
    path = eval_file(eval_root, model, method, benchmark)
    if not path.is_file():
        raise InputError(f"{path}: missing (the study needs every seed's cell)")
    return float(load_eval_json(path)["accuracy"])


def build_study(eval_root: Path, models: list[str], methods: list[str], baseline: str, start: tuple[str, str],
                benchmarks: list[str]) -> pd.DataFrame:
    rows = []
    for bench in benchmarks:
        start_acc = accuracy(eval_root, *start, bench)
        base_accs = [accuracy(eval_root, m, baseline, bench) for m in models]
        for method in methods:
            accs = [accuracy(eval_root, m, method, bench) for m in models]
            mean, se = mean_and_se(accs)
            vs_start, start_ci = paired_difference(accs, [start_acc] * len(accs))
            vs_base, base_ci = paired_difference(accs, base_accs)
            rows.append({"benchmark": bench, "benchmark_name": BENCHMARK_BY_KEY[bench].paper_name, "method": method,
                         "n_seeds": len(accs), "seeds": ";".join(f"{a:.2f}" for a in accs), "mean": mean,
                         "se_seeds": se, "vs_start": vs_start, "vs_start_ci": start_ci,
                         "vs_baseline": None if method == baseline else vs_base,
                         "vs_baseline_ci": None if method == baseline else base_ci,
                         "start": start_acc, "baseline": baseline})
    return pd.DataFrame(rows, columns=COLUMNS)


def _pm(value, half) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.1f}" + ("" if half is None or math.isnan(half) else f" ± {half:.1f}")


def to_markdown(study: pd.DataFrame, models: list[str], start: tuple[str, str], label: str) -> str:
    lines = ["# Seed study: avg@8 accuracy (%)", ""]
    if label:
        lines += [f"> **{label}**", ""]
    lines += [f"Seeds: {', '.join(models)} (one trained model each, same warm start `{'/'.join(start)}`). Mean ± "
              "standard error over seeds; differences are paired by seed, ± the half-width of a 95% t interval.", ""]
    for bench, group in study.groupby("benchmark", sort=False):
        first = group.iloc[0]
        lines += [f"## {first['benchmark_name']} (warm start: {first['start']:.1f})", "",
                  "| Method | per seed | mean ± se | vs warm start | vs " + str(first["baseline"]) + " |",
                  "|---|---|---:|---:|---:|"]
        for r in group.to_dict("records"):
            se = "" if r["se_seeds"] is None or math.isnan(r["se_seeds"]) else f" ± {r['se_seeds']:.1f}"
            lines.append(f"| `{r['method']}` | {r['seeds'].replace(';', ', ')} | {r['mean']:.1f}{se} | "
                         f"{_pm(r['vs_start'], r['vs_start_ci'])} | {_pm(r['vs_baseline'], r['vs_baseline_ci'])} |")
        lines.append("")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="comma-separated model keys, one per seed")
    parser.add_argument("--methods", required=True, help="comma-separated trained methods")
    parser.add_argument("--baseline", default="dapo", help="the method every other is compared with, seed by seed")
    parser.add_argument("--start", required=True, help="MODEL/METHOD of the warm start's cells (e.g. mini_s0/base)")
    parser.add_argument("--benchmarks", required=True, help="comma-separated benchmark keys")
    parser.add_argument("--eval-root", required=True)
    parser.add_argument("--out", required=True, type=Path, help="folder: writes study.csv and study.md")
    parser.add_argument("--label", default="")
    parser.add_argument("--train-root", default=None, type=Path,
                        help="also draw training_curves.png from <train-root>/<model>/<method>/training_log.jsonl")
    parser.add_argument("--analysis-root", default=None, type=Path,
                        help="also draw dependency_findings.png from <analysis-root>/<analysis-model>/<method>.json")
    parser.add_argument("--analysis-model", default=None, help="the analysed model (with --analysis-root)")
    parser.add_argument("--analysis-methods", default=None, help="comma-separated analysed methods (with --analysis-root)")


def run(args: argparse.Namespace) -> int:
    for flag in ("eval_root", "train_root", "analysis_root"):  # given folders must exist
        require_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    models, methods = split(args.models), split(args.methods)
    if args.baseline not in methods:
        raise InputError(f"--baseline {args.baseline}: not one of --methods {args.methods}")
    if args.start.count("/") != 1:
        raise InputError(f"--start {args.start}: expected MODEL/METHOD")
    try:
        benchmarks = [b.key for b in resolve_benchmarks(args.benchmarks)]
    except ValueError as exc:
        raise InputError(f"--benchmarks: {exc}") from None
    start = tuple(args.start.split("/"))
    if args.analysis_root and not (args.analysis_model and args.analysis_methods):
        raise InputError("--analysis-root: needs --analysis-model and --analysis-methods")
    study = build_study(Path(args.eval_root), models, methods, args.baseline, start, benchmarks)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "study.csv", study.round(4).to_csv(index=False, lineterminator="\n"))
    write_text_atomic(args.out / "study.md", to_markdown(study, models, start, args.label))
    if args.train_root or args.analysis_root:
        from vppo.reporting import study_figures

        if args.train_root:
            study_figures.draw_training_curves(args.train_root, models, methods, args.out, args.label)
        if args.analysis_root:
            study_figures.draw_dependency_findings(args.analysis_root, args.analysis_model,
                                                   split(args.analysis_methods), args.out, args.label)
    print(f"vppo study: {len(methods)} methods x {len(models)} seeds x {len(benchmarks)} benchmarks -> {args.out}",
          file=sys.stderr)
    return 0
