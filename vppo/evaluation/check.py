"""``vppo check CANDIDATE --against REFERENCE``: a per-benchmark regression verdict from the standard errors.

CANDIDATE is a results directory (``<benchmark>.json`` of ``vppo eval``) or a checkpoint directory (evaluated
first into ``--eval-out``, reusing matching results already there). REFERENCE is a results directory or
``paper:<model>/<method>`` (the paper's tables in ``results/reference/*.csv``; no standard error there).

For each benchmark: diff = candidate - reference (points), se = sqrt(se_c^2 + se_r^2), z = diff / se. A drop is
significant when z < -z_(1-alpha) (one-sided); it is a REGRESSION when significant and, if ``--max-drop`` is
given, larger than that many points. An ``avg`` row compares the paper's "Avg": the unweighted mean over
its Avg set (``vppo.catalog.PAPER_AVG``; se = sqrt(sum se_i^2) / n), only when all its benchmarks are checked;
other supported benchmarks are checked one by one, never averaged in. Exit status: 0 no regression,
1 regression, 2 bad input.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from vppo.errors import InputError
from vppo.catalog import AVG, PAPER_AVG, resolve_benchmarks
from vppo.evaluation.protocol import paper_average
from vppo.reference import load_reference
from vppo.evaluation.results import check_against_samples, read_results_dir
from vppo.fileio import write_text_atomic


class CheckInputError(InputError, ValueError):
    """A candidate or reference cannot be resolved (names the file, the model/method, or the benchmark)."""


@dataclass(frozen=True)
class Score:
    accuracy: float  # percent
    stderr: float | None  # percent; None where the source has none (the paper)


@dataclass(frozen=True)
class Row:
    benchmark: str
    candidate: Score
    reference: Score
    diff: float
    z: float
    verdict: str


def default_reference_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "results" / "reference"


def paper_reference(spec: str, reference_dir: Path) -> dict[str, Score]:
    """``paper:<model>/<method>`` (our keys) -> {benchmark or "avg": Score} from every table of the paper's
    reference CSVs that has the row (:mod:`vppo.reference`, the reader the tables use)."""
    model_key, _, method_key = spec.removeprefix("paper:").partition("/")
    if not model_key or not method_key:
        raise CheckInputError(f"reference {spec!r}: expected paper:<model>/<method>, e.g. paper:qwen2.5-vl-7b/vppo")
    scores = load_reference(reference_dir).scores(model_key, method_key)
    if not scores:
        raise CheckInputError(f"reference {spec!r}: no row for model {model_key!r} and method {method_key!r} in "
                              f"{reference_dir}/paper_*.csv (labels: vppo.catalog MODEL_PAPER_NAMES, "
                              "METHOD_PAPER_NAMES)")
    return {key: Score(value, None) for key, value in scores.items()}


def results_scores(root: Path, keys: list[str]) -> tuple[dict[str, Score], dict[str, dict]]:
    results = read_results_dir(root, keys)
    for result in results.values():  # the verdict rests on the samples, not on what a JSON file claims
        check_against_samples(result, root)
    return {k: Score(float(r["accuracy"]), float(r["stderr"])) for k, r in results.items()}, results


def with_average(scores: dict[str, Score], keys: list[str]) -> dict[str, Score]:
    """Add the paper's Avg (its Avg set only) when ``keys`` hold that whole set and the source does not state its
    own Avg, as the paper does."""
    if AVG in scores or not set(PAPER_AVG) <= set(keys):
        return scores
    mean, stderr = paper_average({k: (s.accuracy, s.stderr) for k, s in scores.items() if k in keys})
    return scores if mean is None else {**scores, AVG: Score(mean, stderr)}


def compare(candidate: dict[str, Score], reference: dict[str, Score], keys: list[str], alpha: float,
            max_drop: float | None) -> list[Row]:
    z_crit = NormalDist().inv_cdf(1 - alpha)
    rows = []
    for key in keys + [AVG]:
        if key not in reference or key not in candidate:
            if key == AVG:
                continue
            raise CheckInputError(f"benchmark {key!r}: missing from the {'reference' if key in candidate else 'candidate'}")
        c, r = candidate[key], reference[key]
        diff = c.accuracy - r.accuracy
        se = math.sqrt((c.stderr or 0.0) ** 2 + (r.stderr or 0.0) ** 2)
        z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        if z < -z_crit:
            regression = max_drop is None or -diff > max_drop
            verdict = "REGRESSION" if regression else f"drop (within --max-drop {max_drop:g})"
        elif z > z_crit:
            verdict = "improved"
        else:
            verdict = "no significant change"
        rows.append(Row(key, c, r, diff, z, verdict))
    return rows


def _fmt(score: Score) -> str:
    return f"{score.accuracy:.2f}" + (f" ± {score.stderr:.2f}" if score.stderr is not None else "")


def render(rows: list[Row], header: list[str]) -> str:
    lines = [*header, "", "| benchmark | candidate | reference | diff | z | verdict |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.benchmark} | {_fmt(row.candidate)} | {_fmt(row.reference)} | {row.diff:+.2f} | "
                     f"{row.z:+.2f} | {row.verdict} |")
    return "\n".join(lines) + "\n"


def _describe(results: dict[str, dict]) -> str:
    any_result = next(iter(results.values()))
    return (f"{any_result['model']}/{any_result['method']} (backend {any_result['backend']}, "
            f"k={any_result['k']}, checkpoint {any_result['checkpoint_sha256'][:12]})")


def _sampling_mismatch(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    return [f"{k}: sampling {a[k]['sampling']} vs {b[k]['sampling']}" for k in a
            if k in b and a[k]["sampling"] != b[k]["sampling"]]


def configure(parser: argparse.ArgumentParser) -> None:
    from vppo.evaluation.cli import add_eval_options

    parser.add_argument("candidate", type=Path, help="results directory, or a checkpoint directory to evaluate")
    parser.add_argument("--against", required=True, help="results directory, or paper:<model>/<method>")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="points: a significant drop is a regression only when larger than this")
    parser.add_argument("--alpha", type=float, default=0.05, help="one-sided significance level (default 0.05)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table to this Markdown file")
    parser.add_argument("--eval-out", type=Path, default=None, help="where a checkpoint CANDIDATE's results go")
    parser.add_argument("--reference-dir", type=Path, default=None, help="paper tables (default: results/reference)")
    add_eval_options(parser)


def _candidate_dir(args: argparse.Namespace) -> Path:
    if not (args.candidate / "config.json").is_file():
        return args.candidate
    if args.eval_out is None:
        raise CheckInputError(f"{args.candidate} is a checkpoint: pass --eval-out (and --data) to evaluate it")
    from vppo.evaluation.cli import request_from_args
    from vppo.evaluation.runner import run_eval

    run_eval(request_from_args(args, args.candidate, args.eval_out))
    return args.eval_out


def run(args: argparse.Namespace) -> int:
    from vppo.evaluation.cli import eval_input_errors

    if not 0 < args.alpha < 1:
        print(f"vppo check: --alpha {args.alpha} must lie in (0, 1)")
        return 2
    try:
        keys = [b.key for b in resolve_benchmarks(args.benchmarks)]
        candidate_dir = _candidate_dir(args)
        candidate, cand_results = results_scores(candidate_dir, keys)
        header = [f"# vppo check: {candidate_dir} vs {args.against}", "",
                  f"- candidate: {_describe(cand_results)}"]
        if args.against.startswith("paper:"):
            reference = paper_reference(args.against, args.reference_dir or default_reference_dir())
            if not set(PAPER_AVG) <= set(keys):
                reference.pop(AVG, None)  # the paper's Avg is over its whole Avg set
            header.append(f"- reference: {args.against} (the paper's table: no standard error)")
        else:
            reference, ref_results = results_scores(Path(args.against), keys)
            header.append(f"- reference: {_describe(ref_results)}")
            header += [f"- WARNING not like for like: {m}" for m in _sampling_mismatch(cand_results, ref_results)]
        header.append(f"- test: one-sided at alpha {args.alpha:g}"
                      + (f", regression only beyond {args.max_drop:g} points" if args.max_drop is not None else ""))
        missing = [k for k in keys if k not in reference]
        if missing and AVG not in reference:
            raise CheckInputError(f"reference {args.against}: no value for {', '.join(missing)}")
        compared = [k for k in keys if k in reference]
        rows = compare(with_average(candidate, keys), with_average(reference, keys), compared, args.alpha, args.max_drop)
    except (ValueError, FileNotFoundError, *eval_input_errors()) as exc:  # ResultError, CheckInputError: ValueErrors
        print(f"vppo check: {exc}")
        return 2
    table = render(rows, header)
    print(table)
    if args.report:
        write_text_atomic(args.report, table)
    regressions = [row.benchmark for row in rows if row.verdict == "REGRESSION"]
    if regressions:
        print(f"vppo check: REGRESSION on {', '.join(regressions)}")
        return 1
    return 0
