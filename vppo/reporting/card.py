"""``vppo card CHECKPOINT --eval-root results/eval``: the converted checkpoint's model card, with its avg@k table.

The scores are every result file under ``--eval-root`` whose ``checkpoint_sha256`` is this checkpoint's (the
one recorded by ``vppo convert``), so a card never shows another checkpoint's numbers, whatever folder they
sit in. Two result files of one benchmark for this checkpoint (two evaluation settings) are refused: the card
would have to choose. The card is rewritten atomically; the weights are not touched, and Snakemake does not
take the edit for a new checkpoint (a ``directory()`` output's time is its ``.snakemake_timestamp``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vppo.errors import InputError
from vppo.model_families import family_of_dir
from vppo.reporting.results_io import load_eval_frame
from vppo.training.convert import MARKER
from vppo.training.model_card import write_card


def checkpoint_results(checkpoint_sha256: str, eval_root: Path) -> list[dict]:
    """The result files scored on the checkpoint with that hash, as the card's rows."""
    frame = load_eval_frame(eval_root)
    mine = frame[frame["checkpoint_sha256"] == checkpoint_sha256]
    twice = sorted(mine.loc[mine["benchmark"].duplicated(), "benchmark"])
    if twice:
        files = sorted(mine.loc[mine["benchmark"].isin(twice), "eval_file"])
        raise InputError(f"{eval_root}: benchmark(s) {', '.join(twice)} evaluated more than once on this checkpoint "
                         f"({', '.join(files)}); move all but one out of --eval-root")
    return [{"benchmark": r["benchmark"], "accuracy": r["ours"], "stderr": r["stderr"], "k": r["k"],
             "n_questions": r["n_questions"], "backend": r["backend"], "seed": r["seed"]}
            for r in mine.to_dict("records")]


def update_card(checkpoint: Path, eval_root: Path) -> tuple[Path, int]:
    """Rewrite CHECKPOINT/README.md with the scores; returns (card path, number of benchmarks shown)."""
    marker = Path(checkpoint) / MARKER
    if not marker.is_file():
        raise InputError(f"{marker}: missing (not a `vppo convert` output; only those carry the card's facts)")
    record = json.loads(marker.read_text())
    if "card" not in record:
        raise InputError(f"{marker}: field 'card': missing (converted before model cards; convert it again)")
    results = checkpoint_results(record["checkpoint_sha256"], eval_root)
    facts = {**record["card"]}
    facts["family"] = facts.get("family") or family_of_dir(checkpoint).key  # converted before cards named it
    return write_card(checkpoint, facts, results), len(results)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a `vppo convert` output (results/checkpoints/<model>/<method>)")
    parser.add_argument("--eval-root", type=Path, required=True,
                        help="results root <eval-root>/<model>/<method>/<benchmark>.json (vppo eval)")


def run(args: argparse.Namespace) -> int:
    if not args.eval_root.is_dir():
        raise InputError(f"--eval-root {args.eval_root}: no such folder")
    path, n = update_card(args.checkpoint, args.eval_root)
    print(f"vppo card: wrote {path} ({n} benchmark(s) evaluated on this checkpoint)")
    return 0
