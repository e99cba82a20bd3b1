"""lmms-eval task hooks shared by the eight task folders under ``benchmarks/`` (the avg@8 protocol, README "Evaluation").

Each ``benchmarks/<key>/vppo_<key>.yaml`` includes ``benchmarks/_default_template_yaml`` (the protocol: sampling,
repeats, filter, metric) and names its data file and doc processor through ``benchmarks/<key>/utils.py``, which
calls :func:`data_files` and :func:`docs_processor` with its benchmark key. Everything else lives here, once.

Where the data is: the environment variable ``VPPO_EVAL_DATA`` (a directory in the layout of
:mod:`vppo.data.eval_data`). lmms-eval's YAML has no variable expansion, and its ``!function`` tag imports any
attribute of a module, so ``data_files: !function utils.DATA_FILES`` reads the variable when lmms-eval loads
the task (``vppo eval --data DIR`` sets it in-process; standalone lmms-eval runs export it).

Docs after :func:`docs_processor`: every stored row, in order, plus ``row_id`` (its index), ``prompt`` (exactly
as stored, ``<image>`` placeholders included), ``answer`` and ``image_paths`` (absolute). Nothing is dropped: a
row with an empty answer is scored and always wrong (:func:`bad_rows` lists such rows for the result JSON), and
a row that cannot be shown to the model stops the run (:class:`vppo.data.eval_data.EvalDataError`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

from PIL import Image

from vppo.errors import InputError
from vppo.evaluation.protocol import avg_at_k, score_responses
from vppo.eval_images import prepare_image
from vppo.rollout import user_content

DATA_ENV = "VPPO_EVAL_DATA"
#: The metric name in the task YAML and in lmms-eval's per-sample logs.
METRIC = "avg_at_k"


class TaskDataError(InputError, RuntimeError):
    """The task cannot find its data (names the variable or the file)."""


def data_root() -> Path:
    value = os.environ.get(DATA_ENV, "").strip()
    if not value:
        raise TaskDataError(f"{DATA_ENV} is not set: point it at a prepared evaluation data directory "
                            f"(`vppo prepare-data eval --source fixtures|hub --out DIR`), or use `vppo eval --data DIR`")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise TaskDataError(f"{DATA_ENV}={value}: no such directory")
    return root


def data_files(key: str) -> dict[str, str]:
    """``dataset_kwargs.data_files`` of one benchmark: ``{"test": "$VPPO_EVAL_DATA/<key>.json"}``."""
    path = data_root() / f"{key}.json"
    if not path.is_file():
        raise TaskDataError(f"{path}: missing (benchmark {key!r}, {DATA_ENV}={os.environ[DATA_ENV]})")
    return {"test": str(path)}


@functools.lru_cache(maxsize=32)
def _scan(root: str, key: str, mtime_ns: int):
    from vppo.data.eval_data import scan_benchmark  # imported late: only where a task reads its rows

    return scan_benchmark(root, key)


def scan(root: str | Path, key: str):
    """:func:`vppo.data.eval_data.scan_benchmark`, computed once per data file version in this process."""
    root = Path(root).resolve()
    return _scan(str(root), key, (root / f"{key}.json").stat().st_mtime_ns)


def bad_rows(root: str | Path, key: str) -> list:
    return list(scan(root, key).bad)


def docs_processor(key: str) -> Callable:
    """The ``process_docs`` hook of benchmark ``key``, bound to the data directory set now."""
    root = data_root()

    def process_docs(dataset):
        result = scan(root, key)
        if len(dataset) != len(result.rows):
            raise TaskDataError(f"{root / (key + '.json')}: lmms-eval loaded {len(dataset)} rows, the file has "
                                f"{len(result.rows)}")
        if result.bad:
            print(f"[vppo_{key}] {len(result.bad)} row(s) scored as wrong: "
                  + "; ".join(f"row {b.row_id}: {b.reason}" for b in result.bad[:5]), flush=True)

        def add_fields(doc, index):
            row = result.rows[index]
            return {"row_id": row.row_id, "prompt": row.prompt, "answer": row.answer, "image_paths": row.images}

        return dataset.map(add_fields, with_indices=True)

    return process_docs


# ------------------------------------------------------------------------------------------- doc hooks

def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The prompt exactly as stored (``<image>`` placeholders kept: the model adapter places the images)."""
    return doc["prompt"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def doc_to_visual(doc: dict) -> list[Image.Image]:
    """The row's images as the model sees them (LLaMA-Factory's pre-processing, :func:`prepare_image`)."""
    images = []
    for path in doc["image_paths"]:
        with Image.open(path) as img:
            images.append(prepare_image(img))
    return images


def doc_to_messages(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> list[dict]:
    """One user turn in lmms-eval's chat format, each ``<image>`` replaced in place by its image.

    A prompt without placeholders gets its images first (the convention of Qwen2.5-VL datasets).
    """
    images = doc_to_visual(doc)
    try:
        parts = user_content(doc["prompt"], len(images))
    except ValueError as exc:
        raise ValueError(f"row {doc.get('row_id')}: {exc}") from None
    in_order = iter(images)
    content = [{"type": "image", "url": next(in_order)} if part["type"] == "image" else part for part in parts]
    return [{"role": "user", "content": content}]


# ------------------------------------------------------------------------------------------- scoring

def process_results(doc: dict, results: list) -> dict:
    """Grade all k responses of one question (after the take-first-k filter: ``results`` is the k strings).

    ``score`` is the question's accuracy in percent: lmms-eval's CLT standard error over ``score`` is then
    the same number as :func:`vppo.evaluation.protocol.avg_at_k_stderr` (in percent).
    """
    responses = [r if isinstance(r, str) else "" for r in results]
    scored = score_responses(responses, doc["answer"])
    return {METRIC: {"score": 100.0 * scored.accuracy, "row_id": doc["row_id"], "answer": doc["answer"],
                     "k": len(responses), "extracted": scored.extracted, "correct": scored.correct}}


def aggregate_avg_at_k(items: list[dict]) -> float:
    """avg@k in percent: total correct / total samples over all questions (not a mean of means)."""
    return 100.0 * avg_at_k([item["correct"] for item in items])
