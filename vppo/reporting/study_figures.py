"""The seed study's figures (drawn by ``vppo study``): training curves with seed bands, and the paper's two findings.

- ``training_curves.png``, and ``training_curves.csv`` with every number it draws: one panel per key metric of
  ``<train-root>/<model>/<method>/training_log.jsonl``, one colour per method; at each step the line is the mean
  over the study's seed models and the band spans their min..max (over the seeds that logged that step).
- ``dependency_findings.png``: from ``vppo analyze``'s JSONs of one model's methods, (a) concentration: the share
  of the total vision dependency carried by the top x% of tokens; (b) per token role, its share of the tokens
  against its share of the dependency; (c) per benchmark, the mean token dependency (the mini study's held-out
  grid against its text-only control); (d) each response's mean token dependency: responses differ.

A panel whose data the inputs do not hold says so on the figure (older analyses lack the curve and breakdowns).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from vppo.catalog import BENCHMARK_BY_KEY, METHOD_PAPER_NAMES  # noqa: E402
from vppo.errors import InputError  # noqa: E402
from vppo.fileio import write_text_atomic  # noqa: E402
from vppo.reporting.results_io import analysis_file, load_analysis, load_training_log, training_log_file  # noqa: E402

TRAINING_CURVES, CURVES_TABLE, DEPENDENCY_FINDINGS = "training_curves.png", "training_curves.csv", "dependency_findings.png"
#: What the report writes under each figure of the study folder.
CAPTIONS = {
    TRAINING_CURVES: "Training curves of the seed study: per step, the line is the mean over the seed models and "
                     f"the band their min..max (the numbers drawn are in {CURVES_TABLE}).",
    DEPENDENCY_FINDINGS: "Token vision dependency of the analysed checkpoints (vppo analyze): (a) a few tokens carry "
                         "most of it, (b) per token role, (c) per benchmark, (d) responses differ.",
}
MEAN_DEPENDENCY = "dependency_mean"
#: (log key, panel title) of the training-curve panels.
CURVE_PANELS = (("reward", "reward (mean per step)"), ("entropy", "policy entropy (mean per token)"),
                ("completions/mean_length", "response length (tokens)"),
                (MEAN_DEPENDENCY, "token vision dependency (mean per token)"),
                ("kept_token_fraction", "kept-token fraction (TGF)"),
                ("alpha_max", "TAS alpha, largest per step (min = beta_min, mean = 1)"))
BAND_COLUMNS = ["step", "mean", "low", "high", "n_seeds"]
ROLE_ORDER = ("perception", "answer", "format")
MARKED_SHARES = (0.1, 0.4)
LINESTYLES = ("-", "--", "-.", ":")  # equal curves (e.g. kept fraction 1 for every method without TGF) stay visible
DPI = 110


def method_colors(methods) -> dict[str, str]:
    """One colour per method, the same in every figure: by the method's place in the catalog, unknown ones after."""
    known = list(METHOD_PAPER_NAMES)
    unknown = sorted(m for m in set(methods) if m not in known)
    return {m: f"C{(known.index(m) if m in known else len(known) + unknown.index(m)) % 10}" for m in methods}


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _suptitle(fig: Figure, text: str, label: str) -> None:
    fig.suptitle(f"{label}\n{text}" if label else text, fontsize=12)


# ---------------------------------------------------------------------------------------- training curves

def with_mean_dependency(frame: pd.DataFrame) -> pd.DataFrame:
    """The log plus the mean dependency of all response tokens: the logged means of the kept and the dropped tokens
    weighted by the kept fraction (approximate: each is a per-step mean over micro-batches). A step that dropped no
    token logs no dropped mean; methods without the masked-image pass log neither (NaN)."""
    kept, dropped, fraction = frame["dependency_kept_mean"], frame["dependency_dropped_mean"], frame["kept_token_fraction"]
    return frame.assign(**{MEAN_DEPENDENCY: kept * fraction + dropped.where(fraction < 1, 0.0) * (1 - fraction)})


def seed_band(frames: list[pd.DataFrame], key: str) -> pd.DataFrame:
    """Per step, over the seeds' logs holding a value of ``key`` there: their mean, min, max and how many they are."""
    columns = [f.drop_duplicates("step", keep="last").set_index("step")[key].rename(i)
               for i, f in enumerate(frames) if key in f]
    if not columns:
        return pd.DataFrame(columns=BAND_COLUMNS)
    values = pd.concat(columns, axis=1).sort_index()
    band = pd.DataFrame({"mean": values.mean(axis=1), "low": values.min(axis=1), "high": values.max(axis=1),
                         "n_seeds": values.count(axis=1)})
    return band[band["n_seeds"] > 0].rename_axis("step").reset_index()[BAND_COLUMNS]


def curve_table(logs: dict[str, list[pd.DataFrame]]) -> pd.DataFrame:
    """Long table of every band drawn: method, metric, step, mean, low, high, n_seeds."""
    parts = [seed_band([with_mean_dependency(f) for f in frames], key).assign(method=method, metric=key)
             for method, frames in logs.items() for key, _ in CURVE_PANELS]
    parts = [p for p in parts if len(p)]
    columns = ["method", "metric", *BAND_COLUMNS]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def training_curves_figure(table: pd.DataFrame, methods: list[str], seeds: list[str], label: str, out: Path) -> None:
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    colors = method_colors(methods)
    styles = {m: LINESTYLES[i % len(LINESTYLES)] for i, m in enumerate(methods)}
    for ax, (key, title) in zip(fig.subplots(2, 3).ravel(), CURVE_PANELS):
        drawn = table[table["metric"] == key]
        for method in methods:
            band = drawn[drawn["method"] == method]
            if len(band):
                ax.plot(band["step"], band["mean"], color=colors[method], linestyle=styles[method], linewidth=1.6)
                ax.fill_between(band["step"], band["low"], band["high"], color=colors[method], alpha=0.18, linewidth=0)
        ax.set_title(title, fontsize=11)
        if len(drawn):
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
        else:
            _no_data(ax, "not logged by these methods")
    handles = [Line2D([], [], color=colors[m], linestyle=styles[m], linewidth=1.6, label=m) for m in methods]
    handles.append(Patch(color="0.5", alpha=0.25, label=f"band: min..max over {len(seeds)} seeds"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    _suptitle(fig, f"Training curves: mean over seeds {', '.join(seeds)} (line), min..max (band)", label)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)


def draw_training_curves(train_root: Path, models: list[str], methods: list[str], out_dir: Path, label: str) -> pd.DataFrame:
    """Read every (seed model, method) training log (all required), write the CSV and the figure; return the table."""
    logs = {}
    for method in methods:
        paths = [training_log_file(train_root, model, method) for model in models]
        for path in paths:
            if not path.is_file():
                raise InputError(f"{path}: missing (the study's training curves need every seed's log)")
        logs[method] = [load_training_log(p) for p in paths]
    table = curve_table(logs)
    write_text_atomic(out_dir / CURVES_TABLE, table.round(6).to_csv(index=False, lineterminator="\n"))
    training_curves_figure(table, methods, models, label, out_dir / TRAINING_CURVES)
    return table


# ------------------------------------------------------------------------------------ dependency findings

def concentration_points(analysis: dict) -> tuple[list[float], list[float], bool]:
    """(top fractions of tokens, their share of the total dependency, whether it is the whole curve), from (0, 0).
    Analyses written before the curve was recorded give their two points (10%, 40%)."""
    token = analysis["token_dependency"]
    curve = token.get("concentration")
    if curve:
        pairs = [(float(x), float(y)) for x, y in zip(curve["top_fraction"], curve["share"]) if y is not None]
    else:
        pairs = sorted((float(x), float(y)) for x, y in token.get("mass_share_top", {}).items() if y is not None)
    if not pairs:
        return [], [], bool(curve)
    return [0.0] + [x for x, _ in pairs], [0.0] + [y for _, y in pairs], bool(curve)


def _concentration_panel(ax, analyses: dict, colors: dict) -> None:
    drawn = False
    for method, analysis in analyses.items():
        xs, ys, whole = concentration_points(analysis)
        if not xs:
            continue
        marks = [np.interp(s, xs, ys) for s in MARKED_SHARES]
        text = ", ".join(f"top {100 * s:.0f}%: {100 * m:.0f}%" for s, m in zip(MARKED_SHARES, marks))
        ax.plot(100 * np.asarray(xs), 100 * np.asarray(ys), color=colors[method], linewidth=1.6,
                marker=None if whole else "o", label=f"{method} ({text})" + ("" if whole else " [2 points only]"))
        ax.plot([100 * s for s in MARKED_SHARES], [100 * m for m in marks], "o", color=colors[method], markersize=4)
        drawn = True
    if not drawn:
        _no_data(ax, "no dependency recorded")
        return
    ax.plot([0, 100], [0, 100], color="0.6", linestyle=":", linewidth=1, label="every token alike")
    for s in MARKED_SHARES:
        ax.axvline(100 * s, color="0.5", linestyle="--", linewidth=0.8)
    ax.set(xlim=(0, 100), ylim=(0, 101), xlabel="top x% of response tokens (by dependency)",
           ylabel="% of the total dependency they carry")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def _ordered(keys, first=()) -> list[str]:
    return [k for k in first if k in keys] + sorted(k for k in keys if k not in first)


def _role_panel(ax, analyses: dict, colors: dict) -> None:
    parts = {m: a["by_role"] for m, a in analyses.items() if a.get("by_role")}
    if not parts:
        _no_data(ax, "no per-role breakdown in these analyses (older vppo analyze)")
        return
    roles = _ordered({r for p in parts.values() for r in p}, ROLE_ORDER)
    width = 0.8 / len(parts)
    for i, (method, part) in enumerate(parts.items()):
        for j, role in enumerate(roles):
            if role not in part or part[role]["share_of_dependency"] is None:
                continue
            x, dep, tok = j - 0.4 + width * (i + 0.5), 100 * part[role]["share_of_dependency"], 100 * part[role]["share_of_tokens"]
            ax.bar(x, dep, width, color=colors[method], label=method if j == 0 else None)
            ax.plot([x - width / 2, x + width / 2], [tok, tok], color="black", linewidth=2)
            ax.text(x, max(dep, tok) + 1, f"{dep / tok:.1f}x", ha="center", va="bottom", fontsize=7)
    ax.plot([], [], color="black", linewidth=2, label="share of tokens")
    ax.set_xticks(range(len(roles)), roles)
    ax.set_ylabel("% of the total dependency (bar) / of the tokens (line)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _benchmark_panel(ax, analyses: dict, colors: dict) -> None:
    parts = {m: a["by_benchmark"] for m, a in analyses.items() if a.get("by_benchmark")}
    if not parts:
        _no_data(ax, "no per-benchmark breakdown in these analyses (older vppo analyze)")
        return
    benches = _ordered({b for p in parts.values() for b in p}, ("mini_heldout", "mini_control"))
    width = 0.8 / len(parts)
    for i, (method, part) in enumerate(parts.items()):
        for j, bench in enumerate(b for b in benches if b in part):
            x = benches.index(bench) - 0.4 + width * (i + 0.5)
            ax.bar(x, part[bench]["mean"], width, color=colors[method], label=method if j == 0 else None)
            ax.text(x, part[bench]["mean"], f"{part[bench]['mean']:.3g}", ha="center", va="bottom", fontsize=7)
    names = [BENCHMARK_BY_KEY[b].paper_name if b in BENCHMARK_BY_KEY else b for b in benches]
    ax.set_xticks(range(len(benches)), names)
    ax.set_ylabel("mean token dependency")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def response_means(analysis: dict) -> dict[str, list[float]]:
    """Each response's mean token dependency, per benchmark (one group 'all' when the analysis has no records)."""
    records = [t for t in analysis.get("trajectories", []) if t.get("mean_dependency") is not None]
    if not records:
        return {"all": list(analysis["trajectory_mean_dependency"]["values"])}
    groups: dict[str, list[float]] = {}
    for record in records:
        groups.setdefault(record["benchmark"], []).append(float(record["mean_dependency"]))
    return groups


def _response_panel(ax, analyses: dict, colors: dict) -> None:
    groups = {m: response_means(a) for m, a in analyses.items()}
    if not any(v for g in groups.values() for v in g.values()):
        _no_data(ax, "no responses in these analyses")
        return
    benches = _ordered({b for g in groups.values() for b in g}, ("mini_heldout", "mini_control"))
    markers = dict(zip(benches, "o^sDv<>"))
    rng = np.random.default_rng(0)  # the jitter only spreads the points sideways
    methods = list(groups)
    for i, method in enumerate(methods):
        values = [v for vs in groups[method].values() for v in vs]
        if not values:
            continue
        ax.boxplot([values], positions=[i], widths=0.5, showfliers=False, medianprops={"color": "black"})
        for bench, vs in groups[method].items():
            ax.plot(i + rng.uniform(-0.18, 0.18, len(vs)), vs, markers[bench], color=colors[method], alpha=0.6,
                    markersize=4)
    spread = {m: analyses[m]["trajectory_mean_dependency"].get("coefficient_of_variation") for m in methods}
    ax.set_xticks(range(len(methods)), [m + (f"\ncv {spread[m]:.2f}" if spread[m] is not None else "") for m in methods])
    handles = [Line2D([], [], marker=markers[b], linestyle="", color="0.3",
                      label=BENCHMARK_BY_KEY[b].paper_name if b in BENCHMARK_BY_KEY else b) for b in benches]
    ax.legend(handles=handles, fontsize=7)
    ax.set_ylabel("mean token dependency of a response")
    ax.grid(axis="y", alpha=0.3)


def dependency_findings_figure(analyses: dict, model: str, label: str, out: Path) -> None:
    """``analyses``: method -> the dict of :func:`load_analysis`."""
    fig = Figure(figsize=(14, 10), layout="constrained")
    colors = method_colors(list(analyses))
    panels = (("(a) a few tokens carry most of the dependency", _concentration_panel),
              ("(b) per token role: share of dependency vs of tokens", _role_panel),
              ("(c) per benchmark: mean token dependency", _benchmark_panel),
              ("(d) responses differ: per-response mean dependency", _response_panel))
    for ax, (title, draw) in zip(fig.subplots(2, 2).ravel(), panels):
        draw(ax, analyses, colors)
        ax.set_title(title, fontsize=11)
    estimators = sorted({a["estimator"] for a in analyses.values()})
    _suptitle(fig, f"Token vision dependency of {model} ({', '.join(analyses)}; estimator {', '.join(estimators)})", label)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)


def draw_dependency_findings(analysis_root: Path, model: str, methods: list[str], out_dir: Path, label: str) -> None:
    """Read the analysis of every method (all required) and draw the findings figure."""
    analyses = {}
    for method in methods:
        path = analysis_file(analysis_root, model, method)
        if not path.is_file():
            raise InputError(f"{path}: missing (the study's dependency figure needs every analysed method)")
        analyses[method] = load_analysis(path)
    dependency_findings_figure(analyses, model, label, out_dir / DEPENDENCY_FINDINGS)
