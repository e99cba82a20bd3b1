"""The sensitivity study's table and figure from its cells (``vppo sensitivity``; :mod:`vppo.reporting.sensitivity`).

Every comparison is alternative minus baseline, in avg@k points, with the baseline the official choice:

- an evaluation choice (:data:`EVAL_COMPARISONS`) compares two cells of the same checkpoint question by question:
  ``d_i`` = alternative avg@k of question i minus baseline avg@k (:func:`question_comparison`): the mean, its
  standard error sd(d)/sqrt(n) (:func:`vppo.evaluation.paired.paired_test`), a two-sided t interval with n - 1
  degrees of freedom and the two-sided sign-flip p-value;
- a training choice (:data:`TRAINING_COMPARISONS`) has one checkpoint per seed and side: each seed's paired
  question difference as above, and over seeds (:func:`seed_comparison`) the mean of the per-seed differences
  with a t interval from their spread (S - 1 degrees of freedom): the interval that counts seed-to-seed
  variation, not only the sampling of questions and responses.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from vppo.errors import InputError
from vppo.evaluation.paired import mean_and_se, paired_test
from vppo.fileio import write_text_atomic

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    choice: str  # the protocol choice, as the table names it
    baseline: str  # the official side: a variant (evaluation) or a method label (training)
    alternative: str


EVAL_COMPARISONS = (
    Comparison("image bounds: training validation's vs evaluation's", "protocol", "training_bounds"),
    Comparison("backend: vLLM vs transformers", "protocol", "vllm"),
    Comparison("top-k: none vs 50", "protocol", "top_k_none"),
    Comparison("precision: bf16 vs float32", "protocol", "bf16"),
    Comparison("image placement: after vs before the question", "protocol", "image_after_question"),
    Comparison("image mode (palette pictures): RGB first vs own mode", "palette_own_mode", "palette_rgb_first"),
)
#: Training choices: cells of ``--layout-run`` checkpoints (model mini_s<seed>, method vppo@<layout>), protocol variant.
TRAINING_COMPARISONS = (
    Comparison("TAS layout (training): grouped vs balanced", "vppo@balanced", "vppo@grouped"),
)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def common_questions(baseline: dict[str, list[int]], alternative: dict[str, list[int]]) -> list[str]:
    """The row ids both cells hold: all of one of them (a cell evaluated with a smaller --limit pairs with the
    first questions of the other); two cells of different questions are refused."""
    small, large = sorted((baseline.keys(), alternative.keys()), key=len)
    if not small or not small <= large:
        raise InputError(f"the two cells hold different questions ({len(baseline)} vs {len(alternative)}, "
                         f"{len(small - large)} of the smaller set not in the other): use the same data")
    return sorted(small)


def paired_question_differences(baseline: dict[str, list[int]], alternative: dict[str, list[int]]) -> list[float]:
    """Per question both cells hold, alternative avg@k minus baseline avg@k (points)."""
    return [100.0 * (sum(alternative[row]) / len(alternative[row]) - sum(baseline[row]) / len(baseline[row]))
            for row in common_questions(baseline, alternative)]


def question_comparison(baseline: dict[str, list[int]], alternative: dict[str, list[int]]) -> dict:
    """On the questions both cells hold: diff, se, 95% t interval (n - 1 df), two-sided sign-flip p, n, and each
    side's avg@k and standard error there."""
    from vppo.evaluation.protocol import avg_at_k, avg_at_k_stderr

    rows = common_questions(baseline, alternative)
    test = paired_test([paired_question_differences(baseline, alternative)])
    half = t_quantile(max(test.n - 1, 1)) * test.se
    sides = {}
    for name, cell in (("baseline", baseline), ("alternative", alternative)):
        correct = [cell[row] for row in rows]
        sides[f"{name}_avg"], sides[f"{name}_se"] = 100.0 * avg_at_k(correct), 100.0 * avg_at_k_stderr(correct)
    return {"diff": test.diff, "se": test.se, "low": test.diff - half, "high": test.diff + half,
            "p": min(1.0, 2 * min(test.p_drop, test.p_gain)), "n": test.n, **sides}


def seed_comparison(per_seed: list[dict]) -> dict:
    """Over seeds: mean of the per-seed differences, their standard error sd/sqrt(S) and t interval (S - 1 df);
    ``se_questions`` = sqrt(sum se_s^2) / S, the part of it that question and response sampling explains."""
    diffs = [row["diff"] for row in per_seed]
    mean, se = mean_and_se(diffs)
    half = t_quantile(len(diffs) - 1) * se if len(diffs) > 1 else math.nan
    return {"diff": mean, "se": se if len(diffs) > 1 else math.nan, "low": mean - half, "high": mean + half,
            "se_questions": math.sqrt(sum(row["se"] ** 2 for row in per_seed)) / len(per_seed), "n_seeds": len(diffs)}


# ------------------------------------------------------------------------------------------ reading cells

def read_cells(out: Path) -> list[dict]:
    cells = []
    for path in sorted((out / "cells").glob("*/*/*.json")):
        try:
            cells.append(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path}: not a readable sensitivity cell") from None
    return cells


def protocol_text(cell: dict) -> str:
    """One cell's protocol in words: backend, precision, sampling, images, placement."""
    v, s = cell["variant"], cell["sampling"]
    bounds = cell["variant"]["image_bounds"]
    return (f"{cell['backend']} {cell['engine']['dtype']}; T {s['temperature']}, top_p {s['top_p']}, "
            f"top_k {s['top_k'] or 'none'}, {s['max_new_tokens']} new tokens, k {s['n']}; images {v['images']} "
            f"(resize {bounds['resize']['min_pixels']}..{bounds['resize']['max_pixels']} px, processor "
            f"{bounds['processor']['min_pixels']}..{bounds['processor']['max_pixels']}); placement {v['placement']}")


def versions_text(cell: dict) -> str:
    versions = cell["versions"]
    return ", ".join(f"{k} {versions[k]}" for k in ("vppo", "torch", "transformers", "vllm") if versions.get(k))


def _row(choice: str, base: dict, alt: dict, result: dict, interval_over: str, seeds: str) -> dict:
    return {"choice": choice, "model": base["model"], "method": base["method"] if base["method"] == alt["method"]
            else f"{alt['method']} vs {base['method']}", "benchmark": base["benchmark"],
            "baseline": base["variant"]["name"] if base["method"] == alt["method"] else base["method"],
            "alternative": alt["variant"]["name"] if base["method"] == alt["method"] else alt["method"],
            "n_questions": result.get("n", min(base["n_questions"], alt["n_questions"])), "k": base["k"],
            "baseline_avg": result.get("baseline_avg", base["accuracy"]),
            "baseline_se": result.get("baseline_se", base["stderr"]),
            "alternative_avg": result.get("alternative_avg", alt["accuracy"]),
            "alternative_se": result.get("alternative_se", alt["stderr"]),
            "diff": result["diff"], "se_diff": result["se"], "ci95_low": result["low"], "ci95_high": result["high"],
            "p_two_sided": result.get("p", math.nan), "interval_over": interval_over, "seeds": seeds,
            "eval_seed": base["seed"], "baseline_protocol": protocol_text(base), "alternative_protocol": protocol_text(alt),
            "versions": versions_text(alt), "checkpoint_sha256": base["checkpoint_sha256"][:12]
            if base["checkpoint_sha256"] == alt["checkpoint_sha256"]
            else f"{alt['checkpoint_sha256'][:12]} vs {base['checkpoint_sha256'][:12]}"}


def comparison_rows(cells: list[dict]) -> list[dict]:
    """Every comparison whose two cells exist: per checkpoint for evaluation choices, per seed and over seeds for
    training choices."""
    by_key = {(c["model"], c["method"], c["variant"]["name"]): c for c in cells}
    checkpoints = sorted({(c["model"], c["method"]) for c in cells})
    rows = []
    for comparison in EVAL_COMPARISONS:
        for model, method in checkpoints:
            base, alt = by_key.get((model, method, comparison.baseline)), by_key.get((model, method, comparison.alternative))
            if base and alt:
                same = alt.get("same_inputs_as") and alt.get("same_inputs_as") == base.get("same_inputs_as")
                rows.append(_row(comparison.choice, base, alt, question_comparison(base["correct"], alt["correct"]),
                                 "identical model inputs: exactly 0" if same else "questions", str(base["seed"])))
    for comparison in TRAINING_COMPARISONS:
        pairs = []
        for model in sorted({c["model"] for c in cells}):
            base, alt = by_key.get((model, comparison.baseline, "protocol")), by_key.get((model, comparison.alternative, "protocol"))
            if base and alt:
                result = question_comparison(base["correct"], alt["correct"])
                pairs.append((base, alt, result))
                rows.append(_row(comparison.choice, base, alt, result, "questions", model.removeprefix("mini_s")))
        if len(pairs) > 1:
            over = seed_comparison([result for _, _, result in pairs])
            # each side's mean over seeds (on the questions each seed's pair shares) and its se over seeds
            sides = {side: mean_and_se([result[f"{side}_avg"] for _, _, result in pairs]) for side in ("baseline", "alternative")}
            base = dict(pairs[0][0], model="mean over seeds", accuracy=sides["baseline"][0], stderr=sides["baseline"][1])
            alt = dict(pairs[0][1], accuracy=sides["alternative"][0], stderr=sides["alternative"][1])
            row = _row(comparison.choice, base, alt, over, f"seeds (question-level se {over['se_questions']:.2f})",
                       ",".join(p[0]["model"].removeprefix("mini_s") for p in pairs))
            row["checkpoint_sha256"] = "one per seed and side"
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- outputs

CELL_COLUMNS = ["model", "method", "variant", "benchmark", "n_questions", "k", "accuracy", "stderr", "backend", "dtype",
                "protocol", "seed", "versions", "checkpoint_sha256", "data_sha256", "wall_time_s"]


def cell_rows(cells: list[dict]) -> list[dict]:
    return [{"model": c["model"], "method": c["method"], "variant": c["variant"]["name"], "benchmark": c["benchmark"],
             "n_questions": c["n_questions"], "k": c["k"], "accuracy": c["accuracy"], "stderr": c["stderr"],
             "backend": c["backend"], "dtype": c["engine"]["dtype"], "protocol": protocol_text(c), "seed": c["seed"],
             "versions": versions_text(c), "checkpoint_sha256": c["checkpoint_sha256"][:12],
             "data_sha256": c["data_sha256"][:12], "wall_time_s": c["wall_time_s"]} for c in cells]


def to_csv(rows: list[dict], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]) if rows else ["choice"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def _pm(value: float, se: float | None) -> str:
    return f"{value:.2f}" if se is None or math.isnan(se) else f"{value:.2f} ± {se:.2f}"


def to_markdown(rows: list[dict], cells: list[dict]) -> str:
    lines = ["| choice | model / method | seeds | baseline avg@k | alternative avg@k | Δ points ± se | 95% interval | p | over |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "" if math.isnan(r["p_two_sided"]) else "< 1e-4" if r["p_two_sided"] < 1e-4 else f"{r['p_two_sided']:.2g}"
        lines.append(f"| {r['choice']} | {r['model']} / {r['method']} | {r['seeds']} | {_pm(r['baseline_avg'], r['baseline_se'])} "
                     f"({r['baseline']}) | {_pm(r['alternative_avg'], r['alternative_se'])} ({r['alternative']}) | "
                     f"{_pm(r['diff'], r['se_diff'])} | [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}] | {p} | {r['interval_over']} |")
    lines += ["", "Cells (every number's provenance; `cells.csv` has the same with checksums and wall times):", "",
              "| model | method | variant | n | avg@k ± se | protocol | versions | checkpoint sha256 |", "|---|---|---|---|---|---|---|---|"]
    for c in cell_rows(cells):
        lines.append(f"| {c['model']} | {c['method']} | {c['variant']} | {c['n_questions']} | {_pm(c['accuracy'], c['stderr'])} "
                     f"| {c['protocol']}; eval seed {c['seed']} | {c['versions']} | {c['checkpoint_sha256']} |")
    return "\n".join(lines) + "\n"


#: The figure's x range (points): a difference beyond it is drawn as an arrow at the edge, its value written.
FIGURE_RANGE = 20.0


def figure(rows: list[dict], path: Path) -> None:
    """Forest plot: each comparison's difference with its 95% interval (points)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    training = {c.choice for c in TRAINING_COMPARISONS}
    fig = Figure(figsize=(9, 0.45 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    labels = [f"{r['choice']}\n{r['model']} / {r['method']}" + (f" (seed {r['seeds']})" if r["choice"] in training
              and r["interval_over"] == "questions" else "") for r in rows]
    for y, r in enumerate(rows):
        colour = "tab:red" if r["interval_over"].startswith("seeds") else "tab:blue"
        if abs(r["diff"]) > FIGURE_RANGE:
            edge = math.copysign(FIGURE_RANGE * 0.97, r["diff"])
            ax.annotate(f"{r['diff']:.1f} [{r['ci95_low']:.1f}, {r['ci95_high']:.1f}]", (edge, y),
                        xytext=(edge * 0.6, y - 0.22), va="bottom", ha="center", fontsize=7, color=colour,
                        arrowprops={"arrowstyle": "->", "color": colour})
            continue
        low, high = max(r["ci95_low"], -FIGURE_RANGE), min(r["ci95_high"], FIGURE_RANGE)
        ax.errorbar(r["diff"], y, xerr=[[r["diff"] - low], [high - r["diff"]]], fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_xlim(-FIGURE_RANGE, FIGURE_RANGE)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    ax.set_xlabel("alternative minus baseline, avg@k points (95% interval; red: over seeds)")
    ax.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_outputs(out: Path, table_out: Path) -> list[Path]:
    """sensitivity.md/.csv, cells.csv and sensitivity.png under ``table_out`` from the cells under ``out``."""
    cells = read_cells(out)
    if not cells:
        raise InputError(f"{out}/cells: no sensitivity cell yet (pass --checkpoint / --layout-run with --data)")
    rows = comparison_rows(cells)
    paths = [table_out / "sensitivity.md", table_out / "sensitivity.csv", table_out / "cells.csv"]
    write_text_atomic(paths[0], to_markdown(rows, cells))
    write_text_atomic(paths[1], to_csv(rows))
    write_text_atomic(paths[2], to_csv(cell_rows(cells), CELL_COLUMNS))
    if rows:
        figure(rows, table_out / "sensitivity.png")
        paths.append(table_out / "sensitivity.png")
    return paths
