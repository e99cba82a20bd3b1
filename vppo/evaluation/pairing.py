"""Like for like: the two sides of ``vppo check`` / ``vppo compare`` read, their protocols compared, their
questions paired by row id, and a checkpoint side evaluated with the other side's protocol.

A side is a results folder of ``vppo eval``; every number is recounted from its samples file. The protocol of a
result is what makes two numbers comparable (:func:`protocol_of`): sampling (k and max new tokens included),
question limit, image bounds, backend and the data checksum. The paper publishes its protocol but no
per-question data: :data:`PAPER_FIELDS` of :data:`PROTOCOL_SAMPLING` and the real sets' row counts stand in.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from vppo.catalog import AVG, BENCHMARK_BY_KEY, PAPER_AVG
from vppo.errors import InputError
from vppo.evaluation.paired import PairedTest, paired_test
from vppo.evaluation.protocol import PROTOCOL_SAMPLING
from vppo.evaluation.results import check_against_samples, read_results_dir, read_samples

#: The options of ``vppo eval`` that set the protocol, as (option dest, protocol field): a checkpoint side takes
#: them from the other side's results unless given explicitly.
PROTOCOL_OPTIONS = (("samples", "k"), ("max_new_tokens", "max new tokens"), ("limit", "limit"), ("backend", "backend"))
#: The fields of the paper's protocol (PAPO-Eval's avg@8: :data:`PROTOCOL_SAMPLING` on the whole of each real
#: benchmark); its backend and data checksum are not published (a paper check's tolerance covers backend noise).
PAPER_FIELDS = ("k", "max new tokens", "sampling", "limit", "questions")
#: A protocol value the reference does not fix (the paper's backend): the option's own default applies.
ANY = object()
OPTION_DEFAULTS = {"backend": "hf"}


class PairingError(InputError, ValueError):
    """Two sides cannot be compared like for like (names the benchmarks, the fields and both values)."""


@dataclass(frozen=True)
class Side:
    """One results folder: its result files and, per benchmark, each question's avg@k (points) by row id."""

    root: Path
    results: dict[str, dict]
    questions: dict[str, dict[str, float]]

    def describe(self) -> str:
        any_result = next(iter(self.results.values()))
        return (f"{self.root}: {any_result['model']}/{any_result['method']}, checkpoint "
                f"{any_result['checkpoint_sha256'][:12]}, seed {any_result['seed']}")


def read_side(root: Path, keys: list[str]) -> Side:
    if (root / "manifest.json").is_file() and not (root / "config.json").is_file():
        raise PairingError(f"{root}: an evaluation data folder (manifest.json), not a results folder or checkpoint")
    results = read_results_dir(root, keys)
    questions = {}
    for key, result in results.items():
        check_against_samples(result, root)  # the verdict rests on the samples, not on what a JSON file claims
        rows = read_samples(root / result["samples_file"])
        by_id = {str(row["row_id"]): 100.0 * sum(row["correct"]) / len(row["correct"]) for row in rows}
        if len(by_id) != len(rows):
            raise PairingError(f"{root / result['samples_file']}: a row id appears twice")
        questions[key] = by_id
    return Side(root, results, questions)


def protocol_of(result: dict) -> dict:
    sampling = result["sampling"]
    return {"k": result["k"], "max new tokens": sampling["max_new_tokens"],
            "sampling": {k: v for k, v in sampling.items() if k not in ("max_new_tokens", "n")},
            "limit": result["limit"], "backend": result["backend"], "image bounds": result["image_bounds"],
            "data sha256": result["data"]["sha256"]}


def _grouped(differences: dict[tuple[str, str, str], list[str]], keys: list[str]) -> list[str]:
    short = {field: (a[:12], b[:12]) for field, a, b in differences if field == "data sha256"}
    differences = {(f, *short.get(f, (a, b))): benches for (f, a, b), benches in differences.items()}
    return [f"{field} {a} vs {b} ({'all benchmarks' if len(benches) == len(keys) else ', '.join(benches)})"
            for (field, a, b), benches in differences.items()]


def protocol_differences(candidate: Side, reference: Side, keys: list[str]) -> list[str]:
    """'field candidate-value vs reference-value (benchmarks)' for every protocol field that differs."""
    differences: dict[tuple[str, str, str], list[str]] = {}
    for key in keys:
        a, b = protocol_of(candidate.results[key]), protocol_of(reference.results[key])
        for field in a:
            if a[field] != b[field]:
                differences.setdefault((field, str(a[field]), str(b[field])), []).append(key)
    return _grouped(differences, keys)


def paper_differences(candidate: Side, keys: list[str]) -> list[str]:
    """How the candidate's protocol differs from the paper's: sampling, limit, and the real set's row count."""
    paper = protocol_of({"k": PROTOCOL_SAMPLING.n, "sampling": PROTOCOL_SAMPLING.as_dict(), "limit": None,
                         "backend": None, "image_bounds": None, "data": {"sha256": None}})
    differences: dict[tuple[str, str, str], list[str]] = {}
    for key in keys:
        result = candidate.results[key]
        found = {**protocol_of(result), "questions": result["n_questions"]}
        wanted = {**paper, "questions": BENCHMARK_BY_KEY[key].expected_rows}
        for field in PAPER_FIELDS:
            if found[field] != wanted[field]:
                differences.setdefault((field, str(found[field]), f"the paper's {wanted[field]}"), []).append(key)
    return _grouped(differences, keys)


def paired_differences(candidate: Side, reference: Side, key: str) -> list[float]:
    """Per question (matched by row id), candidate avg@k minus reference avg@k (points); the two question sets
    must be the same."""
    a, b = candidate.questions[key], reference.questions[key]
    if a.keys() != b.keys():
        raise PairingError(
            f"{key}: the question sets differ (candidate {len(a)} questions, reference {len(b)}; "
            f"{len(a.keys() - b.keys())} only in the candidate, {len(b.keys() - a.keys())} only in the reference): "
            "compare results made from the same data with the same --limit")
    return [a[row] - b[row] for row in sorted(a)]


def paired_tests(candidate: Side, reference: Side, keys: list[str]) -> dict[str, PairedTest]:
    """{benchmark: its paired test} plus the paper's Avg (its Avg set) when ``keys`` hold the whole set."""
    diffs = {key: paired_differences(candidate, reference, key) for key in keys}
    tests = {key: paired_test([d]) for key, d in diffs.items()}
    if set(PAPER_AVG) <= set(keys):
        tests[AVG] = paired_test([diffs[key] for key in PAPER_AVG])
    return tests


# ------------------------------------------------------------------------------------ a checkpoint side

def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def protocol_for(reference: Side | None, keys: list[str]) -> dict:
    """{option dest: value} a checkpoint is evaluated with to match ``reference`` (None: the paper)."""
    if reference is None:
        return {"samples": PROTOCOL_SAMPLING.n, "max_new_tokens": PROTOCOL_SAMPLING.max_new_tokens, "limit": None,
                "backend": ANY}
    found = {(r["k"], r["sampling"]["max_new_tokens"], r["limit"], r["backend"]) for r in reference.results.values()}
    if len(found) > 1:
        raise PairingError(f"{reference.root}: its benchmarks were evaluated with different protocols "
                           f"((k, max new tokens, limit, backend): {sorted(found, key=str)}); check them one by one")
    return dict(zip((dest for dest, _ in PROTOCOL_OPTIONS), found.pop()))


def apply_protocol(args: argparse.Namespace, protocol: dict, allow_mismatch: bool) -> list[str]:
    """Fill the protocol options the user left unset from ``protocol``; a value given that differs is refused
    unless ``allow_mismatch`` (then kept and returned as 'field given vs protocol value')."""
    mismatches = []
    for dest, field in PROTOCOL_OPTIONS:
        given, wanted = getattr(args, dest), protocol[dest]
        if given is None:
            setattr(args, dest, OPTION_DEFAULTS[dest] if wanted is ANY else wanted)
        elif wanted is not ANY and given != wanted:
            mismatches.append(f"{field} {given} vs {wanted}")
    if mismatches and not allow_mismatch:
        raise PairingError(f"the options differ from the reference's protocol: {'; '.join(mismatches)} (leave them "
                           "unset to use the reference's, or pass --allow-protocol-mismatch to report them)")
    return mismatches


def check_data(data: Path, reference: Side, keys: list[str]) -> None:
    """Refuse before evaluating when ``data``'s recorded checksums are not those the reference was made from."""
    from vppo.data.eval_data import read_manifest

    recorded = ((read_manifest(data) if data.is_dir() else None) or {}).get("benchmarks", {})
    differ = [f"{key} {recorded[key]['sha256'][:12]} vs {reference.results[key]['data']['sha256'][:12]}"
              for key in keys if key in recorded and recorded[key].get("sha256") != reference.results[key]["data"]["sha256"]]
    if differ:
        raise PairingError(f"--data {data}: not the data the reference was evaluated on (sha256 {'; '.join(differ)})")


def evaluate_checkpoint(args: argparse.Namespace, checkpoint: Path, out: Path | None) -> Path:
    if out is None:
        raise PairingError(f"{checkpoint} is a checkpoint: pass --eval-out (and --data) to evaluate it")
    from vppo.evaluation.cli import request_from_args
    from vppo.evaluation.runner import run_eval

    run_eval(request_from_args(args, checkpoint, out))
    return out


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """``vppo eval``'s options, with the protocol ones unset by default: a checkpoint then takes the other side's
    protocol (the paper's for a paper reference)."""
    from vppo.evaluation.cli import add_eval_options

    add_eval_options(parser)
    dests = dict(PROTOCOL_OPTIONS)
    for action in parser._actions:  # argparse keeps no public handle on an added option
        if action.dest in dests:
            action.default = None
            action.help = f"default: the reference's {dests[action.dest]} (the protocol's against the paper)"
    parser.add_argument("--allow-protocol-mismatch", action="store_true",
                        help="compare even when the protocols differ, listing the differences in the table")
