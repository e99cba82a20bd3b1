"""``vppo prepare-data {train,eval} --source ... --out DIR``: build or fetch data into the local layout."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from vppo.errors import parse_key_values

#: kind -> (module, function); each function takes (source, out, **options) and returns the output Path.
PREPARERS = {
    "train": ("vppo.data.train_data", "prepare_train_data"),
    "eval": ("vppo.data.eval_data", "prepare_eval_data"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=list(PREPARERS), help="which data set to prepare")
    parser.add_argument("--source", required=True,
                        help="train: synthetic | mini | hub | a local directory; "
                             "eval: fixtures | mini | hub | a local directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory (the local layout)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="preparer option, e.g. n_rows=64, seed=0, repo=chamber111/VPPO-Eval; each source reads "
                             "its own (one it does not read is an error that lists them)")


def run(args: argparse.Namespace) -> int:
    module_name, function_name = PREPARERS[args.kind]
    prepare = getattr(importlib.import_module(module_name), function_name)
    options = parse_key_values(args.option, "--option")  # OptionError (an InputError) for a malformed pair
    out = prepare(args.source, args.out, **options)
    print(f"{args.kind} data ready in {out}")
    return 0
