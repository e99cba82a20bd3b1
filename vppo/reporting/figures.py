"""Figures of the run (PNG, matplotlib Agg): training curves, token dependency, per-benchmark accuracy.

Per model found under the roots:

- ``training_<model>.png``: reward, accuracy, kept-token fraction and TAS alpha (mean, min-max band) per
  step, one line per method, from ``<train-root>/<model>/<method>/training_log.jsonl``;
- ``dependency_<model>_<method>.png``: the paper's two motivating figures from ``vppo analyze`` output
  (``<analysis-root>/<model>/<method>.json``): distribution of token dependency (log-spaced bins) and of
  the per-response mean dependency;
- ``benchmarks_<model>.png``: accuracy per benchmark and Avg, one bar per method with standard-error bars,
  the paper's values as markers where the paper reports them.

Missing inputs never stop the others: a panel without data says so on the figure, a missing file is
listed under ``skipped``, and a malformed file is reported (named, with its field) and makes the command
exit 1 after everything else is drawn. ``index.json`` lists each figure with the files it was drawn from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vppo.catalog import (AVG, AVG_NAME, NO_PAPER_MODEL, BENCHMARKS, METHOD_PAPER_NAMES, MODEL_PAPER_NAMES, PAPER_AVG,  # noqa: E402
                          PAPER_MODELS, TABLES)
from vppo.errors import InputError, require_dir  # noqa: E402
from vppo.fileio import write_json_atomic  # noqa: E402
from vppo.evaluation.protocol import paper_average  # noqa: E402
from vppo.reference import PaperReference, load_reference  # noqa: E402
from vppo.reporting.results_io import (ResultsError, analysed_methods, analysis_file, load_analysis,  # noqa: E402
                                       load_eval_frame, load_training_log, subdirs, training_log_file)

CURVE_PANELS = (("reward", "reward (mean per step)"), ("accuracy", "accuracy (mean per step)"),
                ("kept_token_fraction", "kept-token fraction (TGF)"), ("alpha_mean", "TAS alpha (mean, min-max band)"))
DPI = 110
LINESTYLES = ("-", "--", "-.", ":")


def _method_order(methods) -> list[str]:
    known = list(METHOD_PAPER_NAMES)
    return sorted(set(methods), key=lambda m: (known.index(m) if m in known else len(known), m))


def _title(kind: str, model: str, label: str) -> str:
    title = f"{kind}: {MODEL_PAPER_NAMES.get(model, model)}"
    return f"{label}\n{title}" if label else title


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


# ---------------------------------------------------------------------------------------------- curves

def training_figure(logs: dict, model: str, label: str, out: Path) -> None:
    """``logs``: method -> frame from :func:`load_training_log` (methods may be absent)."""
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, name) in zip(axes, CURVE_PANELS):
        drawn = 0
        for index, (method, frame) in enumerate(logs.items()):
            if key not in frame or frame[key].isna().all():
                continue
            color = f"C{index % 10}"
            ax.plot(frame["step"], frame[key], label=method, color=color, linewidth=1.6,
                    linestyle=LINESTYLES[index % len(LINESTYLES)])  # equal curves (e.g. kept fraction 1) stay visible
            if key == "alpha_mean" and {"alpha_min", "alpha_max"} <= set(frame) and frame["alpha_min"].notna().any():
                ax.fill_between(frame["step"], frame["alpha_min"], frame["alpha_max"], color=color, alpha=0.15)
            drawn += 1
        ax.set_title(name, fontsize=11)
        if drawn:
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        else:
            reason = "not logged for these methods" if key == "alpha_mean" else "no values logged"
            _no_data(ax, f"{name}: {reason}" if logs else "no training logs found")
    fig.suptitle(_title("Training curves", model, label), fontsize=12)
    _save(fig, out)


# ------------------------------------------------------------------------------------------ dependency

def dependency_figure(analysis: dict, model: str, method: str, label: str, out: Path) -> None:
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    token = analysis["token_dependency"]
    hist = token["log_histogram"]
    if token["n_tokens"] and sum(hist["counts"]):
        edges = np.asarray(hist["edges"])
        fractions = np.asarray(hist["counts"]) / token["n_tokens"]
        left.bar(edges[:-1], fractions, width=np.diff(edges), align="edge", color="C0", edgecolor="white")
        left.set_xscale("log")
        used = np.nonzero(fractions)[0]
        left.set_xlim(edges[used[0]] / 1.5, edges[used[-1] + 1] * 1.5)  # the empty log range says nothing
        left.set_ylim(0, fractions.max() * 1.45)  # head room for the notes box
        left.set_xlabel(f"token vision dependency ({analysis['estimator']}, log scale)")
        left.set_ylabel("fraction of response tokens")
        share = token.get("mass_share_top", {}).get("0.4")
        notes = [f"{token['n_tokens']} tokens",
                 f"median {token['quantiles']['0.5']:.2g}, p99 {token['quantiles']['0.99']:.2g}"]
        if share is not None:
            notes.append(f"top 40% of tokens carry {100 * share:.0f}% of the total")
        if hist.get("below_min"):
            notes.append(f"{hist['below_min']} tokens below {hist.get('min_edge', edges[0]):.0e} not shown")
        left.text(0.98, 0.97, "\n".join(notes), transform=left.transAxes, ha="right", va="top", fontsize=8,
                  bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        left.grid(alpha=0.3)
    else:
        _no_data(left, "no response tokens in the analysis")
    left.set_title("Distribution of token dependency", fontsize=11)
    values = analysis["trajectory_mean_dependency"]["values"]
    if values:
        traj = analysis["trajectory_mean_dependency"]["histogram"]
        edges = np.asarray(traj["edges"])
        right.bar(edges[:-1], traj["counts"], width=np.diff(edges), align="edge", color="C1", edgecolor="white")
        right.plot(values, np.zeros(len(values)), "|", color="k", markersize=12, label="responses")
        right.set_xlabel("mean token dependency of a response")
        right.set_ylabel("responses")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
    else:
        _no_data(right, "no responses in the analysis")
    right.set_title("Per-response mean dependency", fontsize=11)
    fig.suptitle(_title(f"Token vision dependency ({method})", model, label), fontsize=12)
    _save(fig, out)


# ---------------------------------------------------------------------------------------------- bars

def paper_value(reference: PaperReference | None, paper_model: str | None, method: str, column: str) -> float | None:
    if reference is None or paper_model is None:
        return None
    for table in TABLES:  # the first table that has the number
        value = reference.value(table, paper_model, method, column)
        if value is not None:
            return value
    return None


def benchmark_figure(cells, model: str, methods: list[str], reference, paper_model, label: str, out: Path) -> None:
    # The paper's Avg set, plus any other supported benchmark this model has results for; then the paper's Avg.
    evaluated = set(cells.loc[cells["model"] == model, "benchmark"])
    shown = [b for b in BENCHMARKS if b.key in PAPER_AVG or b.key in evaluated]
    columns = [b.key for b in shown] + [AVG]
    names = [b.paper_name for b in shown] + [AVG_NAME]
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(columns))
    paper_drawn = False
    for index, method in enumerate(methods):
        mine = cells[(cells["model"] == model) & (cells["method"] == method)].set_index("benchmark")
        values = [float(mine.loc[c, "ours"]) if c in mine.index else None for c in columns[:-1]]
        errors = [float(mine.loc[c, "stderr"]) if c in mine.index else None for c in columns[:-1]]
        avg, avg_se = paper_average({c: (v, e) for c, v, e in zip(columns, values, errors)})
        values.append(avg)
        errors.append(avg_se)
        pos = x - 0.4 + width * (index + 0.5)
        present = [i for i, v in enumerate(values) if v is not None]
        ax.bar(pos[present], [values[i] for i in present], width, yerr=[errors[i] for i in present], capsize=2,
               label=method if present else f"{method} (no results)", color=f"C{index % 10}",
               error_kw={"linewidth": 0.8})
        for i in (i for i, v in enumerate(values) if v is None):
            ax.text(pos[i], 0.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
        paper = [paper_value(reference, paper_model, method, c) for c in columns]
        marks = [i for i, v in enumerate(paper) if v is not None]
        if marks:
            ax.plot(pos[marks], [paper[i] for i in marks], "D", color="black", markersize=4,
                    label=None if paper_drawn else f"paper ({MODEL_PAPER_NAMES.get(paper_model, paper_model)})")
            paper_drawn = True
    ax.set_xticks(x, names)
    ax.set_xlim(-0.5, len(columns) - 0.5)  # text marks do not autoscale: keep every group in view
    ax.set_ylabel("avg@k accuracy (%), ± standard error")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # head room for the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(methods) + 1, 6))
    fig.suptitle(_title("Accuracy per benchmark", model, label), fontsize=12)
    _save(fig, out)


# ---------------------------------------------------------------------------------------------- driver

def draw_all(train_root, eval_root, analysis_root, out, reference=None, paper_models=None, label="",
             models=None, methods=None) -> dict:
    """Draw every figure the inputs allow; return the index (also written to ``out/index.json``)."""
    out = Path(out)
    roots = {name: Path(r) if r else None for name, r in
             (("train", train_root), ("eval", eval_root), ("analysis", analysis_root))}
    paper_models = paper_models or {}
    found = sorted({m for r in roots.values() if r for m in subdirs(r)})
    index = {"label": label, "figures": [], "skipped": [], "errors": [],
             "inputs": {k: (str(v) if v else None) for k, v in roots.items()}}
    for name, root in roots.items():
        if root is None or not root.is_dir():
            index["skipped"].append({"what": f"{name} figures", "reason": f"no {name} root ({root})"})
    for model in models or found:
        paper_model = paper_models.get(model, model if model in PAPER_MODELS else None)
        _training(index, roots["train"], model, methods, label, out)
        _dependency(index, roots["analysis"], model, methods, label, out)
        _benchmarks(index, roots["eval"], model, methods, reference, paper_model, label, out)
    write_json_atomic(out / "index.json", index)
    return index


def _error(index: dict, exc: Exception) -> None:
    index["errors"].append(str(exc))
    print(f"vppo figures: {exc}", file=sys.stderr)


def _training(index, root, model, methods, label, out) -> None:
    if root is None or not (root / model).is_dir():
        return
    logs, inputs, skipped = {}, [], []
    for method in _method_order(methods or subdirs(root / model)):
        path = training_log_file(root, model, method)
        if not path.is_file():
            skipped.append({"what": f"training curves of {model}/{method}", "reason": f"missing {path}"})
            continue
        try:
            logs[method] = load_training_log(path)
            inputs.append(str(path))
        except ResultsError as exc:
            _error(index, exc)
    index["skipped"] += skipped
    if logs:
        file = f"training_{model}.png"
        training_figure(logs, model, label, out / file)
        index["figures"].append({"file": file, "kind": "training_curves", "model": model,
                                 "methods": list(logs), "inputs": inputs})


def _dependency(index, root, model, methods, label, out) -> None:
    if root is None or not (root / model).is_dir():
        return
    for method in _method_order(methods or analysed_methods(root, model)):
        path = analysis_file(root, model, method)
        if not path.is_file():
            index["skipped"].append({"what": f"dependency figure of {model}/{method}", "reason": f"missing {path}"})
            continue
        try:
            analysis = load_analysis(path)
        except ResultsError as exc:
            _error(index, exc)
            continue
        file = f"dependency_{model}_{method}.png"
        dependency_figure(analysis, model, method, label, out / file)
        index["figures"].append({"file": file, "kind": "token_dependency", "model": model, "methods": [method],
                                 "inputs": [str(path)]})


def _benchmarks(index, root, model, methods, reference, paper_model, label, out) -> None:
    if root is None or not (root / model).is_dir():
        return
    wanted = _method_order(methods or subdirs(root / model))
    cells = None
    try:
        cells = load_eval_frame(root, [model], wanted)
    except ResultsError as exc:
        _error(index, exc)
    if cells is None or cells.empty:
        index["skipped"].append({"what": f"benchmark bars of {model}", "reason": f"no readable results under {root / model}"})
        return
    file = f"benchmarks_{model}.png"
    benchmark_figure(cells, model, wanted, reference, paper_model, label, out / file)
    absent = [m for m in wanted if m not in set(cells["method"])]
    index["figures"].append({"file": file, "kind": "benchmark_bars", "model": model, "methods": wanted,
                             "methods_without_results": absent, "paper_model": paper_model,
                             "inputs": sorted(cells["eval_file"])})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-root", default=None)
    parser.add_argument("--eval-root", default=None)
    parser.add_argument("--analysis-root", default=None)
    parser.add_argument("--out", required=True, help="output folder (PNGs and index.json)")
    parser.add_argument("--reference-dir", default=None, help="the paper's CSVs, for markers on the bar charts")
    parser.add_argument("--paper-model", action="append", default=[], metavar="MODEL=PAPER_MODEL",
                        help="compare MODEL's bars with the paper's PAPER_MODEL (e.g. tiny=qwen2.5-vl-7b); "
                             "default: paper models compare with themselves, others with nothing")
    parser.add_argument("--models", default=None, help="comma-separated model keys (default: all found)")
    parser.add_argument("--methods", default=None, help="comma-separated method keys (default: all found)")
    parser.add_argument("--label", default="", help="banner on every figure title (e.g. 'SMOKE RUN')")


def run(args: argparse.Namespace) -> int:
    for flag in ("train_root", "eval_root", "analysis_root", "reference_dir"):  # given roots must exist
        require_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
    bad = [pair for pair in args.paper_model if "=" not in pair]
    if bad:
        raise InputError(f"--paper-model wants MODEL=PAPER_MODEL, got {', '.join(bad)}")
    pairs = {model: (None if paper == NO_PAPER_MODEL else paper)
             for model, paper in (p.split("=", 1) for p in args.paper_model)}
    reference = load_reference(args.reference_dir) if args.reference_dir else None  # bad: InputError (vppo.cli)
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
    index = draw_all(args.train_root, args.eval_root, args.analysis_root, args.out, reference, pairs, args.label,
                     split(args.models), split(args.methods))
    print(f"vppo figures: {len(index['figures'])} figure(s), {len(index['skipped'])} skipped, "
          f"{len(index['errors'])} error(s); index {Path(args.out) / 'index.json'}")
    return 1 if index["errors"] else 0
