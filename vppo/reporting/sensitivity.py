"""``vppo sensitivity``: how much each protocol choice moves avg@k of the same checkpoints (docs/sensitivity/).

A *cell* is one checkpoint evaluated on one benchmark under one protocol *variant* (:data:`VARIANTS`): the
evaluation protocol (``vppo eval``'s: transformers backend, top-k 50, float32 on CPU, the LLaMA-Factory image
resize, each image where its ``<image>`` stands) with exactly one choice changed. Every cell keeps each
question's k graded samples, so two cells of the same checkpoint are compared question by question
(:mod:`vppo.reporting.sensitivity_table`). Training choices are cells too: ``--layout-run`` checkpoints (the same
recipe trained with another ``rollout_layout``) are evaluated under the protocol variant and compared seed by seed.

Cells are generated with the evaluation's own model adapters (:class:`vppo.evaluation.lmms_adapter.VPPOHFModel`,
:class:`vppo.evaluation.vllm_adapter.VPPOVLLMModel`) on the rows ``vppo eval`` reads
(:func:`vppo.data.eval_data.scan_benchmark`), without lmms-eval's task layer, which refuses any sampling but the
protocol's. A finished cell (``<out>/cells/<model>/<method>/<variant>.json``) made from the same inputs is reused,
so the vLLM cells can come from another Python environment (the one with vLLM) into the same folder.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from PIL import Image

from vppo import package_versions
from vppo.errors import InputError
from vppo.eval_images import PROCESSOR_BOUNDS, prepare_image, protocol_image_bounds
from vppo.fileio import write_json_atomic
from vppo.rollout import IMAGE_PLACEHOLDER

SCHEMA = "vppo.sensitivity_cell/1"
#: The recipe whose training image bounds the "training-validation bounds" variant applies (the paper's 7B run).
TRAINING_BOUNDS_RECIPE = "7b"


# ------------------------------------------------------------------------------------- the protocol's choices

def training_bounds() -> tuple[int, int]:
    """(min_pixels, max_pixels) of the paper's training recipe: what its training validation resizes into."""
    from vppo.training.recipes import load_recipe

    recipe = load_recipe(TRAINING_BOUNDS_RECIPE)
    return int(recipe.min_pixels), int(recipe.max_pixels)


def training_resize(image: Image.Image) -> Image.Image:
    """The official training loader's resize into the paper's training bounds (own mode, then RGB)."""
    from vppo.training.images import resize_training_image

    return resize_training_image(image, *training_bounds())


def as_palette(image: Image.Image) -> Image.Image:
    """The picture as a palette image (lossless for the mini task's four colours): what a GIF or 8-bit PNG holds."""
    return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


#: Image preparations: name -> (description, function of the stored image). "protocol" is ``vppo eval``'s.
IMAGE_PREPARATIONS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "protocol": ("LLaMA-Factory resize into [32², 768²] px, own mode then RGB (the evaluation protocol)", prepare_image),
    "training_bounds": ("the official training loader's resize into the 7B recipe's [256·28², 1280·28²] px "
                        "(own mode then RGB)", training_resize),
    "palette_own_mode": ("stored as a palette image, then the protocol's preparation (resized in palette mode, "
                         "nearest, when a resize is due; then RGB: the official loader)",
                         lambda image: prepare_image(as_palette(image))),
    "palette_rgb_first": ("stored as a palette image, converted to RGB first, then the protocol's preparation "
                          "(bicubic when a resize is due: the import before item 2)",
                          lambda image: prepare_image(as_palette(image).convert("RGB"))),
}


def image_after_question(prompt: str) -> str:
    """The prompt with its images moved after the question, before the answer-format instruction (where a row
    whose ``<image>`` trails the question sees them under the official template)."""
    text = prompt.replace(IMAGE_PLACEHOLDER, "")
    question, sep, instruction = text.partition("\n\n")
    return question + IMAGE_PLACEHOLDER * prompt.count(IMAGE_PLACEHOLDER) + sep + instruction


#: Prompt placements: name -> (description, function of the stored prompt).
PLACEMENTS: dict[str, tuple[str, Callable[[str], str]]] = {
    "placeholder": ("each image where its <image> stands (the mini rows: before the question)", lambda prompt: prompt),
    "after_question": ("the images after the question, before the instruction", image_after_question),
}


@dataclass(frozen=True)
class Variant:
    """One evaluation protocol: the defaults are ``vppo eval``'s on a CPU machine."""

    name: str
    description: str
    backend: str = "hf"
    top_k: int = 50  # 0: no top-k cut
    dtype: str = "float32"
    images: str = "protocol"  # a key of IMAGE_PREPARATIONS
    placement: str = "placeholder"  # a key of PLACEMENTS


PROTOCOL = Variant("protocol", "the evaluation protocol (vppo eval: transformers, top-k 50, float32 on CPU)")
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    PROTOCOL,
    replace(PROTOCOL, name="vllm", description="vLLM engine (vppo eval --backend vllm) instead of transformers",
            backend="vllm"),
    replace(PROTOCOL, name="top_k_none", description="no top-k cut (top_k 50 dropped)", top_k=0),
    replace(PROTOCOL, name="bf16", description="bfloat16 weights and activations instead of float32", dtype="bfloat16"),
    replace(PROTOCOL, name="image_after_question", description="image after the question text instead of before it",
            placement="after_question"),
    replace(PROTOCOL, name="training_bounds", description="images resized into the paper's training bounds "
            "(its training validation) instead of the evaluation's", images="training_bounds"),
    replace(PROTOCOL, name="palette_own_mode", description="palette pictures, resized in their own mode (official)",
            images="palette_own_mode"),
    replace(PROTOCOL, name="palette_rgb_first", description="palette pictures converted to RGB before any resize",
            images="palette_rgb_first"),
)}


def variant_record(variant: Variant) -> dict:
    """What a cell records about its protocol (the image preparation spelt out)."""
    record = asdict(variant)
    record["images_description"] = IMAGE_PREPARATIONS[variant.images][0]
    record["placement_description"] = PLACEMENTS[variant.placement][0]
    bounds = protocol_image_bounds(PROCESSOR_BOUNDS)
    if variant.images == "training_bounds":
        low, high = training_bounds()
        bounds["resize"] = {"min_pixels": low, "max_pixels": high}
    record["image_bounds"] = bounds
    return record


# ------------------------------------------------------------------------------------------------ cells

@dataclass(frozen=True)
class Model:
    """A checkpoint of the study: ``model``/``method`` labels (its cell folder) and its directory."""

    model: str
    method: str
    path: Path


def parse_checkpoint(spec: str) -> Model:
    """``MODEL/METHOD=PATH`` (``--checkpoint``)."""
    label, sep, path = spec.partition("=")
    model, slash, method = label.partition("/")
    if not (sep and slash and model and method and path):
        raise InputError(f"--checkpoint {spec!r}: expected MODEL/METHOD=PATH, e.g. mini_s0/base=resources/models/mini")
    return Model(model, method, Path(path))


def parse_layout_run(spec: str) -> Model:
    """``LAYOUT:SEED=PATH`` (``--layout-run``): model ``mini_s<SEED>``, method ``vppo@<LAYOUT>``."""
    from vppo.training.balance import ROLLOUT_LAYOUTS

    label, sep, path = spec.partition("=")
    layout, colon, seed = label.partition(":")
    if not (sep and colon and path and seed.isdigit() and layout in ROLLOUT_LAYOUTS):
        raise InputError(f"--layout-run {spec!r}: expected LAYOUT:SEED=PATH with LAYOUT one of "
                         f"{sorted(ROLLOUT_LAYOUTS)}, e.g. grouped:1=runs/grouped_s1")
    return Model(f"mini_s{seed}", f"vppo@{layout}", Path(path))


def cell_path(out: Path, model: Model, variant: str) -> Path:
    return out / "cells" / model.model / model.method / f"{variant}.json"


def cell_inputs(model: Model, variant: Variant, data_sha256: str, checkpoint_sha256: str, benchmark: str,
                samples: int, max_new_tokens: int, limit: int | None, seed: int) -> dict:
    """The fields that identify a cell: a finished cell with the same ones is reused."""
    return {"model": model.model, "method": model.method, "checkpoint_sha256": checkpoint_sha256,
            "benchmark": benchmark, "data_sha256": data_sha256, "variant": variant_record(variant),
            "k": samples, "max_new_tokens": max_new_tokens, "limit": limit, "seed": seed}


def jobs_for(rows, variant: Variant, sampling, benchmark: str) -> list:
    """One generation job per row: the variant's prompt placement and images, the given sampling."""
    from vppo.evaluation.requests import GenerationJob

    prepare, place = IMAGE_PREPARATIONS[variant.images][1], PLACEMENTS[variant.placement][1]
    jobs = []
    for row in rows:
        images = []
        for path in row.images:
            with Image.open(path) as stored:
                images.append(prepare(stored))
        jobs.append(GenerationJob(text=place(row.prompt), images=images, sampling=sampling,
                                  key=(benchmark, row.row_id)))
    return jobs


def generate_hf(model: Model, variant: Variant, jobs: list, seed: int, batch_size: int) -> tuple[list[list[str]], dict]:
    """Each job's k responses from the transformers adapter ``vppo eval`` uses (seeded once, batches in order)."""
    import torch

    from vppo.evaluation.lmms_adapter import VPPOHFModel

    lm = VPPOHFModel(str(model.path), batch_size=batch_size, max_new_tokens=jobs[0].sampling.max_new_tokens,
                     dtype=variant.dtype, seed=seed)
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(jobs), batch_size):
        responses += [[r.text for r in out] for out in lm._generate(jobs[start:start + batch_size])]
    return responses, {"dtype": str(lm.model.dtype).removeprefix("torch."), "device": str(lm.device)}


def generate_vllm(model: Model, variant: Variant, jobs: list, seed: int, batch_size: int) -> tuple[list[list[str]], dict]:
    """Each job's k responses from the vLLM adapter: one n=k request per question, per-question seeds."""
    from vppo.evaluation.vllm_adapter import VPPOVLLMModel  # (on CPU it sets a small KV cache: CPU_ENGINE_ENV)

    lm = VPPOVLLMModel(str(model.path), max_new_tokens=jobs[0].sampling.max_new_tokens, seed=seed,
                       dtype=variant.dtype)
    responses = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        prompts, params = zip(*(lm.build_request(job) for job in chunk))
        outputs = lm.engine.generate(list(prompts), list(params), use_tqdm=False)
        responses += [[c.text for c in out.outputs] for out in outputs]
    return responses, {"dtype": str(lm.engine.llm_engine.model_config.dtype).removeprefix("torch."), "device": "cpu"}


def same_generation(a: Variant, b: Variant) -> bool:
    """Same backend, precision and sampling: only the prompt or the images can differ."""
    return (a.backend, a.dtype, a.top_k) == (b.backend, b.dtype, b.top_k)


def same_inputs(jobs: list, others: list) -> bool:
    """Every job has the same text and pixel-identical images (mode and size included) as its counterpart."""
    return len(jobs) == len(others) and all(
        a.text == b.text and len(a.images) == len(b.images)
        and all(x.mode == y.mode and x.size == y.size and x.tobytes() == y.tobytes() for x, y in zip(a.images, b.images))
        for a, b in zip(jobs, others))


#: Backends: name -> generate(model, variant, jobs, seed, batch size) -> (responses per job, engine facts).
BACKENDS: dict[str, Callable] = {"hf": generate_hf, "vllm": generate_vllm}


def evaluate_cell(model: Model, variant: Variant, data: Path, benchmark: str, samples: int, max_new_tokens: int,
                  limit: int | None, seed: int, out: Path, batch_size: int, log=print) -> dict:
    """The cell of ``model`` under ``variant`` (reused when a finished one has the same inputs)."""
    from vppo.data.eval_data import data_checksum, scan_benchmark
    from vppo.evaluation.protocol import Sampling, avg_at_k, avg_at_k_stderr, score_responses
    from vppo.modeling import checkpoint_sha256, verify_checkpoint_dir

    verify_checkpoint_dir(model.path)
    path = cell_path(out, model, variant.name)
    inputs = cell_inputs(model, variant, data_checksum(data, benchmark), checkpoint_sha256(model.path), benchmark,
                         samples, max_new_tokens, limit, seed)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path}: not a readable sensitivity cell (remove it to evaluate the cell again)") from None
        if old.get("schema") == SCHEMA and {k: old.get(k) for k in inputs} == inputs:
            log(f"[sensitivity] {model.model}/{model.method} {variant.name}: reusing {path}")
            return old
    rows = scan_benchmark(data, benchmark).rows[:limit]
    sampling = Sampling(top_k=variant.top_k, max_new_tokens=max_new_tokens, n=samples)
    started = time.perf_counter()
    jobs = jobs_for(rows, variant, sampling, benchmark)
    same = variant.name != PROTOCOL.name and same_generation(variant, PROTOCOL) and same_inputs(
        jobs, jobs_for(rows, PROTOCOL, sampling, benchmark))
    if same:  # the same model inputs, sampling and engine give the protocol's samples: no second run
        protocol = evaluate_cell(model, PROTOCOL, data, benchmark, samples, max_new_tokens, limit, seed, out,
                                 batch_size, log)
        correct, engine = {row: list(c) for row, c in protocol["correct"].items()}, protocol["engine"]
    else:
        responses, engine = BACKENDS[variant.backend](model, variant, jobs, seed, batch_size)
        correct = {row.row_id: score_responses(r, row.answer).correct for row, r in zip(rows, responses)}
    cell = {"schema": SCHEMA, **inputs, "checkpoint": str(model.path.resolve()), "data": str(Path(data).resolve()),
            "backend": variant.backend, "engine": engine, "sampling": sampling.as_dict(),
            "same_inputs_as": PROTOCOL.name if same else None,
            "accuracy": 100.0 * avg_at_k(list(correct.values())),
            "stderr": 100.0 * avg_at_k_stderr(list(correct.values())), "n_questions": len(correct),
            "versions": package_versions("vllm"), "wall_time_s": round(time.perf_counter() - started, 1),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "correct": correct}
    write_json_atomic(path, cell)
    log(f"[sensitivity] {model.model}/{model.method} {variant.name}: avg@{samples} {cell['accuracy']:.2f} ± "
        f"{cell['stderr']:.2f} ({len(correct)} questions, {cell['wall_time_s']:.0f} s)")
    return cell


# ------------------------------------------------------------------------------------------- command line

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="study folder: cells/ (one JSON per checkpoint and variant), then the table and figure")
    parser.add_argument("--data", type=Path, help="prepared evaluation data (vppo prepare-data eval --source mini)")
    parser.add_argument("--benchmark", default="mini_heldout")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL/METHOD=PATH",
                        help="a checkpoint evaluated under every --variants (repeatable)")
    parser.add_argument("--layout-run", action="append", default=[], metavar="LAYOUT:SEED=PATH",
                        help="a checkpoint trained with rollout_layout LAYOUT and seed SEED, evaluated under the "
                             "protocol only (repeatable)")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "vllm"),
                        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all but vllm, which needs "
                             "the vLLM environment: run the command there with --variants vllm)")
    parser.add_argument("--samples", type=int, default=8, help="k of avg@k")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the mini recipe's completion budget")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="questions per generate call")
    parser.add_argument("--table-out", type=Path, default=None,
                        help="where sensitivity.md/.csv, cells.csv and sensitivity.png go (default: --out)")
    parser.add_argument("--no-table", action="store_true", help="evaluate the cells only")


def selected_variants(spec: str) -> list[Variant]:
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise InputError(f"--variants: unknown {unknown or spec!r}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[name] for name in names]


def run(args: argparse.Namespace) -> int:
    from vppo.reporting.sensitivity_table import write_outputs

    variants = selected_variants(args.variants)
    models = [parse_checkpoint(spec) for spec in args.checkpoint]
    layout_runs = [parse_layout_run(spec) for spec in args.layout_run]
    if (models or layout_runs) and args.data is None:
        raise InputError("--data is needed to evaluate checkpoints")
    for flag, value in (("--samples", args.samples), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size), ("--limit", 1 if args.limit is None else args.limit)):
        if value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    common = dict(data=args.data, benchmark=args.benchmark, samples=args.samples, max_new_tokens=args.max_new_tokens,
                  limit=args.limit, seed=args.seed, out=args.out, batch_size=args.batch_size)
    for model in models:
        for variant in variants:
            evaluate_cell(model, variant, **common)
    for model in layout_runs:
        evaluate_cell(model, PROTOCOL, **common)
    if not args.no_table:
        written = write_outputs(args.out, args.table_out or args.out)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
