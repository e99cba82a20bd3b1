"""``vppo compare A B``: B minus A per benchmark and the paper's Avg, paired by question, with intervals.

The table of ``vppo check`` without its regression framing, for A/B questions. A and B are results folders of
``vppo eval`` or checkpoints; a checkpoint is evaluated first into ``--eval-out``/a or /b with the other side's
protocol when that side is a results folder (else with the options given, the paper's protocol by default).
Protocols must match (or ``--allow-protocol-mismatch`` lists the differences) and so must the question sets.

Per row: the mean per-question difference of avg@k (B - A, points), a 95% interval mean ± 1.96 se (normal
approximation: too narrow with few questions), and the two-sided sign-flip p-value, raw and Holm-adjusted over
the table's rows (:mod:`vppo.evaluation.paired`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import NormalDist

from vppo.catalog import resolve_benchmarks
from vppo.errors import InputError
from vppo.evaluation import pairing
from vppo.evaluation.check import side_scores, with_average
from vppo.evaluation.paired import holm
from vppo.fileio import write_text_atomic

CONFIDENCE = 0.95


class CompareInputError(InputError, ValueError):
    """A side cannot be read, evaluated or paired with the other (names the file or the field)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", type=Path, help="results directory or checkpoint: the baseline side")
    parser.add_argument("b", type=Path, help="results directory or checkpoint: compared with A (B - A)")
    parser.add_argument("--eval-out", type=Path, default=None, help="where checkpoint sides are evaluated (a/, b/)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table to this Markdown file")
    pairing.add_protocol_options(parser)


def _sides(args: argparse.Namespace, keys: list[str]) -> tuple[pairing.Side, pairing.Side, list[str]]:
    paths = {"a": args.a, "b": args.b}
    sides = {name: pairing.read_side(path, keys) for name, path in paths.items() if not pairing.is_checkpoint(path)}
    mismatches: list[str] = []
    for name, path in paths.items():
        if name in sides:
            continue
        other = next(iter(sides.values()), None)  # a results side sets the protocol; two checkpoints: the options
        mismatches = pairing.apply_protocol(args, pairing.protocol_for(other, keys), args.allow_protocol_mismatch)
        if other is not None:
            pairing.check_data(args.data, other, keys)
        out = None if args.eval_out is None else args.eval_out / name
        sides[name] = pairing.read_side(pairing.evaluate_checkpoint(args, path, out), keys)
    return sides["a"], sides["b"], mismatches


def build(args: argparse.Namespace) -> str:
    try:
        keys = [b.key for b in resolve_benchmarks(args.benchmarks)]
    except ValueError as exc:
        raise CompareInputError(f"--benchmarks: {exc}") from None
    a, b, mismatches = _sides(args, keys)
    differences = mismatches + pairing.protocol_differences(b, a, keys)
    if differences and not args.allow_protocol_mismatch:
        raise CompareInputError("not like for like, B vs A: " + "; ".join(differences)
                                + " (pass --allow-protocol-mismatch to compare anyway)")
    tests = pairing.paired_tests(b, a, keys)
    scores_a, scores_b = (with_average(side_scores(s, keys), keys) for s in (a, b))
    p_two = {key: min(1.0, 2 * min(t.p_drop, t.p_gain)) for key, t in tests.items()}
    adjusted = dict(zip(tests, holm(list(p_two.values()))))
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    lines = ["# vppo compare: B - A", "", f"- A: {a.describe()}", f"- B: {b.describe()}",
             *(f"- PROTOCOL MISMATCH (--allow-protocol-mismatch): {d}" for d in differences),
             f"- paired by question (row id): mean of B - A avg@k per question; {CONFIDENCE:.0%} interval mean ± "
             f"{z:.2f} se (normal approximation, too narrow with few questions); p two-sided sign-flip, Holm over "
             f"the {len(tests)} rows", "",
             "| benchmark | questions | A | B | B - A | 95% interval | p | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for key, t in tests.items():
        sa, sb = scores_a[key], scores_b[key]
        lines.append(f"| {key} | {t.n} | {sa.accuracy:.2f} ± {sa.stderr:.2f} | {sb.accuracy:.2f} ± {sb.stderr:.2f} | "
                     f"{t.diff:+.2f} | [{t.diff - z * t.se:+.2f}, {t.diff + z * t.se:+.2f}] | {p_two[key]:.3g} | "
                     f"{adjusted[key]:.3g} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        table = build(args)
    except (ValueError, FileNotFoundError) as exc:  # other InputErrors (checkpoint, eval data) pass on as they are
        raise CompareInputError(str(exc)) from None
    print(table)
    if args.report:
        write_text_atomic(args.report, table)
    return 0
