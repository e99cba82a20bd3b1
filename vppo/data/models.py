"""``vppo fetch-model SOURCE OUT``: put a base or released checkpoint into the local layout.

SOURCE is ``tiny`` (the offline random-init test model, built by :mod:`vppo.data.tiny_models`), ``tiny-warm``
(the same model after its warm start: it answers ``<think> .. </think> \\boxed{X}`` at about chance accuracy,
so smoke runs see non-zero rewards), ``tiny-vllm`` (the warm-started model at the width vLLM's CPU build accepts,
head_dim 64, with a hub checkpoint's processor files), ``tiny-qwen3vl``, ``tiny-qwen3vl-warm`` and
``tiny-qwen3vl-vllm`` (the same three builds of the Qwen3-VL architecture; ``--family qwen3-vl`` makes the first
three build it too, as the workflow's ``model_family`` does), ``mini`` (the mini study's model, partly taught the
grid task: :mod:`vppo.data.mini_model`; ``--family`` picks its architecture too), ``mini-qwen3vl`` (the same in
the Qwen3-VL architecture), an existing local directory (copied), or a Hugging Face hub id
(downloaded; needs network, so it runs on the submit host). With ``--family`` a source of another family fails.
The result is checked with :func:`vppo.modeling.verify_checkpoint_dir` so a partial download fails here,
not hours later in a training job. The copy is written to a temporary sibling and renamed at the end.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from vppo.errors import InputError, OutputExistsError
from vppo.fileio import publish_dir

#: Offline sources built here rather than fetched: source -> (tiny_models shape, warm start, model family; None:
#: the ``family`` argument's, Qwen2.5-VL by default).
TINY_SOURCES = {"tiny": ("tiny", False, None), "tiny-warm": ("tiny", True, None), "tiny-vllm": ("vllm", True, None),
                "tiny-qwen3vl": ("tiny", False, "qwen3-vl"), "tiny-qwen3vl-warm": ("tiny", True, "qwen3-vl"),
                "tiny-qwen3vl-vllm": ("vllm", True, "qwen3-vl")}
#: The mini study's model (:mod:`vppo.data.mini_model`): source -> model family (None: as for TINY_SOURCES).
MINI_SOURCES = {"mini": None, "mini-qwen3vl": "qwen3-vl"}


def fetch_model(source: str, out: str | Path, revision: str | None = None, seed: int = 0,
                family: str | None = None) -> Path:
    """Put ``source`` into ``out``. ``family`` (a key of :data:`vppo.model_families.FAMILIES`): the family the
    generic tiny sources build, and the one every other source must be (InputError otherwise)."""
    from vppo.model_families import DEFAULT_FAMILY, get_family

    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        raise OutputExistsError(f"{out}: already exists and is not empty; remove it to fetch {source!r} again")
    try:
        wanted = get_family(family) if family else None
    except ValueError as exc:
        raise InputError(f"model family: {exc}") from None
    built = TINY_SOURCES[source][2] if source in TINY_SOURCES else MINI_SOURCES.get(source)
    if built and wanted is not None and built != wanted.key:  # known before minutes of building it
        raise _wrong_family(source, get_family(built), wanted)
    with publish_dir(out) as tmp:
        if source in TINY_SOURCES:
            from vppo.data.tiny_models import WARM_START_STEPS, build_tiny_qwen

            shape, warm, built = TINY_SOURCES[source]
            build_tiny_qwen(tmp, seed=seed, shape=shape, warm_start_steps=WARM_START_STEPS if warm else 0,
                            family=built or (wanted or DEFAULT_FAMILY).key)
        elif source in MINI_SOURCES:
            from vppo.data.mini_model import build_mini_model

            build_mini_model(tmp, seed=seed, family=MINI_SOURCES[source] or (wanted or DEFAULT_FAMILY).key)
        elif Path(source).is_dir():
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        elif Path(source).exists():
            raise InputError(f"model source {source}: is a file, expected a checkpoint directory")
        else:
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(repo_id=source, revision=revision, local_dir=str(tmp))
            except OSError as exc:  # offline, unknown id or revision, network: the hub's errors are OSErrors
                raise InputError(f"model source {source!r}: not a local folder, and the hub cannot provide it "
                                 f"({exc})") from exc
            except ValueError as exc:  # a malformed repo id
                raise InputError(f"model source {source!r}: not a local folder nor a hub id ({exc})") from exc
        from vppo.model_families import family_of_dir
        from vppo.modeling import verify_checkpoint_dir

        verify_checkpoint_dir(tmp)
        found = family_of_dir(tmp)
        if wanted is not None and found is not wanted:
            raise _wrong_family(source, found, wanted)
    return out


def _wrong_family(source: str, found, wanted) -> InputError:
    return InputError(f"model source {source!r}: a {found.label} checkpoint, but the model family asked for is "
                      f"{wanted.key} ({wanted.label})")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help=f"{' | '.join([*TINY_SOURCES, *MINI_SOURCES])} | a local checkpoint directory | a hub id "
                                       "(e.g. Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct)")
    parser.add_argument("out", type=Path, help="directory to create")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny models")
    parser.add_argument("--family", default=None,
                        help="model family (qwen2.5-vl | qwen3-vl): what tiny, tiny-warm, tiny-vllm and mini build, and what "
                             "any other source must be (default: the source's own; tiny sources: qwen2.5-vl)")


def run(args: argparse.Namespace) -> int:
    path = fetch_model(args.source, args.out, args.revision, args.seed, args.family)
    print(f"model {args.source} ready in {path}")
    return 0
