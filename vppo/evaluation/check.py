"""``vppo check CANDIDATE --against REFERENCE``: does the candidate score worse than the reference, like for like,
with a false-alarm rate of at most alpha for the whole verdict.

CANDIDATE is a results folder of ``vppo eval`` or a checkpoint, evaluated first into ``--eval-out`` with the
reference's own protocol (sampling, k, max new tokens, question limit, backend; the data must have the
reference's checksum). REFERENCE is a results folder or ``paper:<model>/<method>`` (the paper's tables in
``results/reference/*.csv``). A protocol difference that remains is refused, or with
``--allow-protocol-mismatch`` listed in the table; question sets must match by row id.

Against a results folder, each row tests the paired per-question differences (:mod:`vppo.evaluation.paired`:
candidate avg@k minus reference avg@k; one-sided sign-flip p-value). Against the paper (no per-question data),
the candidate's standard error with a stated protocol tolerance (``--paper-tolerance`` points). The rows, every
benchmark and the paper's Avg (its Avg set, ``vppo.catalog.PAPER_AVG``, only when all of it is checked), form
one family: Holm's step-down keeps the chance of any false alarm at most ``--alpha``. A row is a REGRESSION when
its Holm-adjusted p is at most alpha and, if ``--max-drop`` is given, its drop larger than that many points.
Exit status: 0 no regression, 1 regression, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from vppo.catalog import AVG, PAPER_AVG, resolve_benchmarks
from vppo.errors import InputError
from vppo.evaluation import pairing
from vppo.evaluation.paired import PairedTest, holm, mean_and_se, resolution, tolerance_test
from vppo.evaluation.protocol import paper_average
from vppo.fileio import write_text_atomic
from vppo.reference import load_reference

#: Points a paper number may differ by for reasons of implementation (backend, library versions) rather than
#: the checkpoint: README "Expect 1-2 points of backend noise".
PAPER_TOLERANCE = 2.0


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
    test: PairedTest
    p_holm: float
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


def side_scores(side: pairing.Side, keys: list[str]) -> dict[str, Score]:
    """avg@k and the standard error over questions (sd / sqrt(n), ddof 1), recounted from the samples."""
    return {key: Score(*mean_and_se(list(side.questions[key].values()))) for key in keys}


def with_average(scores: dict[str, Score], keys: list[str]) -> dict[str, Score]:
    """Add the paper's Avg (its Avg set only) when ``keys`` hold that whole set and the source does not state its
    own Avg, as the paper does."""
    if AVG in scores or not set(PAPER_AVG) <= set(keys):
        return scores
    mean, stderr = paper_average({k: (s.accuracy, s.stderr) for k, s in scores.items() if k in keys})
    return scores if mean is None else {**scores, AVG: Score(mean, stderr)}


def paper_tests(candidate: pairing.Side, paper: dict[str, Score], keys: list[str],
                tolerance: float) -> tuple[dict[str, Score], dict[str, PairedTest]]:
    """Per benchmark (and Avg when the paper states it and ``keys`` hold its set): the candidate's difference to
    the paper, tested with the candidate's standard error floored at its resolution, beyond ``tolerance``."""
    scores = side_scores(candidate, keys)
    floored = {}
    for key, score in scores.items():
        result = candidate.results[key]
        floored[key] = Score(score.accuracy, max(score.stderr, resolution(result["n_questions"], result["k"])))
    floored = with_average(floored, keys) if AVG in paper else floored
    tests = {}
    for key, score in floored.items():
        if key in paper:
            diff = score.accuracy - paper[key].accuracy
            p_drop, p_gain = tolerance_test(diff, score.stderr, tolerance)
            n = sum(candidate.results[k]["n_questions"] for k in (PAPER_AVG if key == AVG else [key]))
            tests[key] = PairedTest(diff, score.stderr, n, p_drop, p_gain)
    return with_average(scores, keys), tests


def verdicts(tests: dict[str, PairedTest], alpha: float, max_drop: float | None) -> dict[str, tuple[float, str]]:
    """{row: (Holm-adjusted p of a drop, verdict)}; gains are adjusted as their own family (they never fail)."""
    names = list(tests)
    drops = dict(zip(names, holm([tests[n].p_drop for n in names])))
    gains = dict(zip(names, holm([tests[n].p_gain for n in names])))
    out = {}
    for name in names:
        if drops[name] <= alpha:
            regression = max_drop is None or -tests[name].diff > max_drop
            out[name] = (drops[name], "REGRESSION" if regression else f"drop (within --max-drop {max_drop:g})")
        else:
            out[name] = (drops[name], "improved" if gains[name] <= alpha else "no significant change")
    return out


def _fmt(score: Score) -> str:
    return f"{score.accuracy:.2f}" + (f" ± {score.stderr:.2f}" if score.stderr is not None else "")


def render(rows: list[Row], header: list[str]) -> str:
    lines = [*header, "", "| benchmark | questions | candidate | reference | diff ± se | p | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t = row.test
        lines.append(f"| {row.benchmark} | {t.n} | {_fmt(row.candidate)} | {_fmt(row.reference)} | "
                     f"{t.diff:+.2f} ± {t.se:.2f} | {t.p_drop:.3g} | {row.p_holm:.3g} | {row.verdict} |")
    return "\n".join(lines) + "\n"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("candidate", type=Path, help="results directory, or a checkpoint directory to evaluate")
    parser.add_argument("--against", required=True, help="results directory, or paper:<model>/<method>")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="points: a significant drop is a regression only when larger than this")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise false-alarm rate of the whole verdict (default 0.05)")
    parser.add_argument("--paper-tolerance", type=float, default=PAPER_TOLERANCE,
                        help=f"points a paper number may differ by for implementation reasons (default {PAPER_TOLERANCE:g})")
    parser.add_argument("--report", type=Path, default=None, help="also write the table to this Markdown file")
    parser.add_argument("--eval-out", type=Path, default=None, help="where a checkpoint CANDIDATE's results go")
    parser.add_argument("--reference-dir", type=Path, default=None, help="paper tables (default: results/reference)")
    pairing.add_protocol_options(parser)


def _candidate_side(args: argparse.Namespace, reference: pairing.Side | None, keys: list[str]) -> tuple[pairing.Side, list[str]]:
    """The candidate's results (a checkpoint evaluated with the reference's protocol first) and the option values
    that were allowed to differ from that protocol."""
    if not pairing.is_checkpoint(args.candidate):
        return pairing.read_side(args.candidate, keys), []
    mismatches = pairing.apply_protocol(args, pairing.protocol_for(reference, keys), args.allow_protocol_mismatch)
    if reference is not None:
        pairing.check_data(args.data, reference, keys)
    return pairing.read_side(pairing.evaluate_checkpoint(args, args.candidate, args.eval_out), keys), mismatches


def build(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """The table's rows and header lines."""
    try:
        keys = [b.key for b in resolve_benchmarks(args.benchmarks)]
    except ValueError as exc:
        raise CheckInputError(f"--benchmarks: {exc}") from None
    on_paper = args.against.startswith("paper:")
    reference = None if on_paper else pairing.read_side(Path(args.against), keys)
    candidate, option_mismatches = _candidate_side(args, reference, keys)
    if on_paper:
        paper = paper_reference(args.against, args.reference_dir or default_reference_dir())
        if not set(PAPER_AVG) <= set(keys):
            paper.pop(AVG, None)  # the paper's Avg is over its whole Avg set
        missing = [k for k in keys if k not in paper]
        if missing and AVG not in paper:
            raise CheckInputError(f"reference {args.against}: no value for {', '.join(missing)}")
        compared = [k for k in keys if k in paper]
        differences = pairing.paper_differences(candidate, compared or keys)
        cand_scores, tests = paper_tests(candidate, paper, compared or keys, args.paper_tolerance)
        ref_scores = paper
        method = (f"against the paper's number (no per-question data): z = (diff + {args.paper_tolerance:g}) / se, "
                  f"the candidate's se (floored at one sample's step 100/(n k)), {args.paper_tolerance:g} points "
                  "of protocol tolerance (--paper-tolerance)")
        ref_line = f"{args.against} (the paper's table: no standard error)"
    else:
        differences = pairing.protocol_differences(candidate, reference, keys)
        tests = pairing.paired_tests(candidate, reference, keys)
        cand_scores, ref_scores = (with_average(side_scores(s, keys), keys) for s in (candidate, reference))
        method = ("paired by question: candidate avg@k minus reference avg@k per row id; p one-sided from the "
                  "sign-flip distribution of those differences (exact up to 16 non-zero, else normal)")
        ref_line = reference.describe()
    differences = option_mismatches + differences
    if differences and not args.allow_protocol_mismatch:
        raise CheckInputError("not like for like, candidate vs reference: " + "; ".join(differences)
                              + " (pass --allow-protocol-mismatch to compare anyway)")
    judged = verdicts(tests, args.alpha, args.max_drop)
    rows = [Row(key, cand_scores[key], ref_scores[key], tests[key], *judged[key]) for key in tests]
    any_result = next(iter(candidate.results.values()))
    header = [f"# vppo check: {candidate.root} vs {args.against}", "",
              f"- candidate: {candidate.describe()}", f"- reference: {ref_line}",
              f"- protocol: avg@{any_result['k']}, {any_result['sampling']['max_new_tokens']} new tokens, limit "
              f"{any_result['limit']}, backend {any_result['backend']}"
              + ("".join(f"\n- PROTOCOL MISMATCH (--allow-protocol-mismatch): {d}" for d in differences)
                 if differences else ", the same on both sides"),
              f"- test: {method}; {len(rows)} one-sided tests ({', '.join(tests)}), Holm step-down: the chance of any "
              f"false alarm in this table is at most alpha {args.alpha:g}"
              + (f"; a regression only beyond {args.max_drop:g} points" if args.max_drop is not None else "")]
    return rows, header


def run(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise CheckInputError(f"--alpha {args.alpha}: must lie in (0, 1)")
    if args.paper_tolerance < 0:
        raise CheckInputError(f"--paper-tolerance {args.paper_tolerance}: must be at least 0")
    try:
        rows, header = build(args)
    except (ValueError, FileNotFoundError) as exc:  # other InputErrors (checkpoint, eval data) pass on as they are
        raise CheckInputError(str(exc)) from None
    table = render(rows, header)
    print(table)
    if args.report:
        write_text_atomic(args.report, table)
    regressions = [row.benchmark for row in rows if row.verdict == "REGRESSION"]
    if regressions:
        print(f"vppo check: REGRESSION on {', '.join(regressions)}", file=sys.stderr)
        return 1
    return 0
