"""False-alarm rate and power of ``vppo check``: the old rule (unpaired z per row, each at alpha) next to the
new one (paired sign-flip per row, Holm over the table), on simulated re-evaluations.

Simulation, not repeated evaluation: each replicate draws the reference's and the candidate's k samples per
question afresh from Binomial(k, p_i), with p_i taken from a real evaluation (``--results``: each question's
avg@k of a ``vppo eval`` results folder) or, for a paper-sized table, drawn from Beta(a, 1 - a) with a the paper's
VPPO-7B accuracy per benchmark (per-question accuracies near 0 or 1, as real ones; the real sets' row counts).
"Unchanged": the candidate has the same p_i. "Worse": every p_i lowered by ``--drop`` points (at least 0).
A replicate is flagged when the table reports any regression (exit 1).

    python bench/bench_check_calibration.py --results RESULTS_DIR [--replicates 1000] [--out bench/results/check_calibration.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np

from vppo.catalog import PAPER_BENCHMARKS
from vppo.evaluation.paired import holm, paired_test
from vppo.evaluation.results import read_results_dir, read_samples

PAPER_VPPO_7B = [71.6, 68.1, 82.8, 46.5, 33.3, 71.5, 47.9, 37.9]  # results/reference/paper_main_7b.csv


def old_flags(cand: list[np.ndarray], ref: list[np.ndarray], alpha: float) -> bool:
    """The rule ``vppo check`` had: per row z = diff / sqrt(se_c^2 + se_r^2) (se over questions; the Avg's
    sqrt(sum se^2) / B), a regression when z < -z_(1-alpha) on any row; a drop with both se 0 is z = -inf."""
    def score(values):
        return 100 * values.mean(), 100 * values.std(ddof=1) / math.sqrt(values.size)

    rows = [(score(c), score(r)) for c, r in zip(cand, ref)]
    mean = lambda xs: (sum(x[0] for x in xs) / len(xs), math.sqrt(sum(x[1] ** 2 for x in xs)) / len(xs))
    rows.append((mean([c for c, _ in rows]), mean([r for _, r in rows])))
    z_crit = NormalDist().inv_cdf(1 - alpha)
    for (mc, sc), (mr, sr) in rows:
        se, diff = math.hypot(sc, sr), mc - mr
        z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        if z < -z_crit:
            return True
    return False


def new_flags(cand: list[np.ndarray], ref: list[np.ndarray], alpha: float) -> bool:
    diffs = [100 * (c - r) for c, r in zip(cand, ref)]
    tests = [paired_test([d]) for d in diffs] + [paired_test(diffs)]
    return min(holm([t.p_drop for t in tests])) <= alpha


def rate(flags: int, n: int) -> dict:
    """The flagged fraction with its 95% Wilson interval."""
    z, p = 1.96, flags / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": round(p, 4), "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)],
            "flagged": flags, "replicates": n}


def simulate(p: list[np.ndarray], k: int, drop: float, replicates: int, alpha: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for condition, p_cand in (("unchanged", p), ("worse", [np.clip(x - drop / 100, 0, 1) for x in p])):
        counts = {"old": 0, "new": 0}
        for _ in range(replicates):
            ref = [rng.binomial(k, x) / k for x in p]
            cand = [rng.binomial(k, x) / k for x in p_cand]
            counts["old"] += old_flags(cand, ref, alpha)
            counts["new"] += new_flags(cand, ref, alpha)
        out[condition] = {method: rate(n, replicates) for method, n in counts.items()}
    return out


def real_accuracies(root: Path) -> tuple[list[np.ndarray], int, dict]:
    results = read_results_dir(root)
    p = [np.array([sum(row["correct"]) / len(row["correct"]) for row in read_samples(root / r["samples_file"])])
         for r in results.values()]
    any_result = next(iter(results.values()))
    source = {key: {"model": r["model"], "checkpoint_sha256": r["checkpoint_sha256"], "backend": r["backend"],
                    "sampling": r["sampling"], "seed": r["seed"], "limit": r["limit"], "n_questions": r["n_questions"],
                    "accuracy": r["accuracy"], "data_sha256": r["data"]["sha256"], "versions": r["versions"]}
              for key, r in results.items()}
    return p, any_result["k"], source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a vppo eval results folder (per-question p_i)")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--drop-real", type=float, default=3.0, help="points: the worse checkpoint, real scenarios")
    parser.add_argument("--drop-paper", type=float, default=0.5, help="points: the worse checkpoint, paper-sized")
    parser.add_argument("--out", type=Path, default=Path("bench/results/check_calibration.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    p_real, k_real, source = real_accuracies(args.results)
    rng = np.random.default_rng(1)
    p_paper = [rng.beta(a / 100, 1 - a / 100, size=b.expected_rows) for a, b in zip(PAPER_VPPO_7B, PAPER_BENCHMARKS)]
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "alpha": args.alpha, "replicates": args.replicates,
        "scenarios": {
            "real_tiny": {"k": k_real, "drop_points": args.drop_real, "questions": [int(x.size) for x in p_real],
                          "source": source,
                          **simulate(p_real, k_real, args.drop_real, args.replicates, args.alpha, seed=0)},
            "real_tiny_limit2": {"k": k_real, "drop_points": args.drop_real, "questions": [2] * len(p_real),
                                 "source": "the first 2 questions of real_tiny (the default run's --limit 2)",
                                 **simulate([x[:2] for x in p_real], k_real, args.drop_real, args.replicates, args.alpha,
                                            seed=0)},
            "paper_sized": {"k": 8, "drop_points": args.drop_paper, "questions": [int(x.size) for x in p_paper],
                            "p_i": "Beta(a, 1 - a), a = the paper's VPPO-7B accuracy per benchmark, seed 1",
                            **simulate(p_paper, 8, args.drop_paper, args.replicates, args.alpha, seed=0)},
        },
    }
    report["wall_time_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, scenario in report["scenarios"].items():
        for condition in ("unchanged", "worse"):
            cells = "  ".join(f"{m} {v['rate']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                              for m, v in scenario[condition].items())
            print(f"{name:<16} {condition:<10} {cells}")
    print(f"written {args.out} ({report['wall_time_s']} s)")


if __name__ == "__main__":
    main()
