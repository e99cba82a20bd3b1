"""One training run: inputs checked, trainer built, resumed from WORK_DIR, OUT_DIR written last and atomically.

WORK_DIR holds everything resumable (TRL ``checkpoint-N`` folders, ``training_log.jsonl``); a rerun with the
same arguments resumes from the last complete checkpoint there. OUT_DIR appears only when the run finished:
``final/`` (what ``Trainer.save_model`` writes: an HF directory, or FSDP sharded state), ``training_log.jsonl``
and ``train_summary.json``, assembled in a sibling temp directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vppo import harness_commit, package_versions
from vppo.algorithm import MethodPreset
from vppo.errors import InputError
from vppo.fileio import refuse_existing_output, replace_if_absent_or_empty, require_writable, write_json_atomic
from vppo.modeling import checkpoint_sha256, verify_checkpoint_dir, vision_token_ids
from vppo.rollout import chat_prompt, content_text
from vppo.training.recipes import Recipe, load_recipe, method_preset, run_identity
from vppo.training.trl_config import grpo_config_kwargs
from vppo.training.memory import resolve_sleep_mode
from vppo.training.startup import MODEL_CACHE, check_inputs, once_per_job
from vppo.training.tracking import attach_trackers, default_run_name, progress_callbacks, tracking_kwargs

logger = logging.getLogger(__name__)
SUMMARY_FILE, LOG_FILE, FINAL_DIR = "train_summary.json", "training_log.jsonl", "final"
RUN_FILE = "vppo_run.json"  # in WORK_DIR: the arguments its checkpoints belong to


class TrainError(InputError, RuntimeError):
    """A training run cannot start or finish; the message names the path or field."""


class StoppedBeforeLimit(RuntimeError):
    """Training saved ``checkpoint`` and stopped early (Slurm time limit near, or SIGUSR1): run again to resume."""

    def __init__(self, step: int, checkpoint: Path, reason: str):
        super().__init__(f"stopped at step {step} ({reason}) after saving {checkpoint}; run again to resume from it")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainRequest:
    """The arguments of ``vppo train`` (see :mod:`vppo.training.cli`)."""

    model: Path
    data: Path
    recipe: str
    method: str
    work_dir: Path
    out: Path
    seed: int = 0
    max_steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None  # the trackers' name of the run; default <model folder>/<method>/seed<seed>
    # save and stop when the Slurm job's time left would not cover another rollout plus this (None: never)
    save_margin_s: float | None = None

    @property
    def tracking_name(self) -> str:
        return self.run_name or default_run_name(self.model, self.method, self.seed)


def prompt_token_counts(dataset, processor, min_pixels: int | None = None, max_pixels: int | None = None,
                        image_sizes: dict[str, tuple[int, int]] | None = None) -> list[int]:
    """Encoded prompt length of every row (text tokens + each image's vision tokens), without pixel work.

    Image token counts come from the image sizes (``image_sizes`` by file path, else the file headers): the training
    resize into
    [min_pixels, max_pixels] (:func:`vppo.training.images.training_image_size`), then the processor's
    ``smart_resize``.
    """
    import io

    import datasets
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from vppo.training.images import training_image_size

    image_processor, tokenizer = processor.image_processor, processor.tokenizer
    factor = image_processor.patch_size * image_processor.merge_size
    bounds = dict(min_pixels=image_processor.size["shortest_edge"], max_pixels=image_processor.size["longest_edge"])
    undecoded = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    counts = []
    for prompt, images in zip(dataset["prompt"], undecoded):
        text = chat_prompt(processor, content_text(prompt[-1]["content"]), len(images))  # images in place
        n = len(tokenizer(text)["input_ids"]) - len(images)  # each image's single placeholder is expanded below
        for image in images:
            size = (image_sizes or {}).get(image["path"])
            if size is None:
                with Image.open(image["path"] or io.BytesIO(image["bytes"])) as opened:
                    size = opened.size
            width, height = training_image_size(*size, min_pixels, max_pixels)
            h, w = smart_resize(height, width, factor=factor, **bounds)
            n += (h // factor) * (w // factor)
        counts.append(n)
    return counts


#: logit bias of a token the policy must never sample in vLLM rollouts (the official rollout's value)
NEVER_SAMPLE_LOGIT_BIAS = -100.0


def _generation_kwargs(model_dir: Path, recipe: Recipe) -> dict:
    """What keeps the vision special tokens (and any the checkpoint suppresses) out of every rollout.

    vLLM: ``logit_bias`` -100 in its SamplingParams (TRL passes ``generation_kwargs`` there), as the official
    rollout does for the image token; HF ``generate``: ``suppress_tokens`` (TRL's own default covers only the
    image token, and ``generation_kwargs`` replaces it).
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        suppressed = set(GenerationConfig.from_pretrained(model_dir).suppress_tokens or [])
    except OSError:
        suppressed = set()
    never = sorted(suppressed | set(vision_token_ids(AutoConfig.from_pretrained(model_dir),
                                                     AutoTokenizer.from_pretrained(model_dir))))
    if recipe.use_vllm:
        return {"logit_bias": {token: NEVER_SAMPLE_LOGIT_BIAS for token in never}}
    return {"suppress_tokens": never}


def build_config(request: TrainRequest, recipe: Recipe, preset: MethodPreset):
    from trl import GRPOConfig

    kwargs = grpo_config_kwargs(recipe, preset, request.work_dir, request.seed)
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(GRPOConfig)}:  # newer transformers renamed it
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    # disable_dropout: the old-log-prob and masked passes must see the same network as the update
    kwargs.update(save_total_limit=2, disable_dropout=True,
                  model_init_kwargs={"dtype": "bfloat16" if recipe.bf16 else "float32"})
    kwargs["generation_kwargs"] = _generation_kwargs(request.model, recipe)
    kwargs.update(tracking_kwargs(recipe.report_to, request.tracking_name, request.work_dir))
    if recipe.use_vllm and recipe.vllm_mode == "server":
        kwargs["vllm_server_host"] = os.environ.get("VPPO_VLLM_SERVER_HOST", "0.0.0.0")
        kwargs["vllm_server_port"] = int(os.environ.get("VPPO_VLLM_SERVER_PORT", "8000"))
    return GRPOConfig(**kwargs)


def _summary(request, recipe, preset, trainer, data_info, wall, resumed_from, final_format, tracking) -> dict:
    return {
        "model": str(request.model), "method": preset.name, "preset": dataclasses.asdict(preset),
        "recipe": dataclasses.asdict(recipe), "overrides": request.overrides, "seed": request.seed,
        "steps": trainer.state.global_step, "max_steps": trainer.state.max_steps, "data": data_info,
        "versions": package_versions("trl", "accelerate", "datasets", "deepspeed", "mathruler"), "world_size": trainer.accelerator.num_processes, "wall_time_s": round(wall, 3),
        "resumed_from": None if resumed_from is None else str(resumed_from), "final_format": final_format,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tracking": tracking,
        "harness_commit": harness_commit(),
    }


@contextmanager
def cpu_threads(recipe: Recipe):
    """One intra-op thread for CPU recipes unless OMP_NUM_THREADS says otherwise.

    The smoke model's ops are far too small to gain from threads, and on shared 2-core machines OpenMP
    threads spinning against other processes made a step ~10x slower (measured: 16.6 s vs 1.5 s for 4 steps).
    """
    import torch

    previous = torch.get_num_threads()
    if recipe.gpus_per_node == 0 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_training(request: TrainRequest, callbacks: list | None = None, reward=None, *, recipe: Recipe | None = None,
                 preset: MethodPreset | None = None) -> Path:
    """Train (resuming from WORK_DIR when it holds a checkpoint) and write OUT_DIR; returns OUT_DIR.

    ``callbacks`` and ``reward`` are for tests (crash injection, a steered grader). ``recipe`` and ``preset``: the
    request's recipe and method already loaded and resolved (``vppo train`` checks them before the heavy imports),
    so that they are read once; by default they are loaded from the request here.
    """
    from vppo.training.time_limit import stop_on_sigusr1

    recipe = resolve_sleep_mode(recipe or load_recipe(request.recipe, request.overrides, request.max_steps),
                                request.model)
    with cpu_threads(recipe), stop_on_sigusr1():
        return _run_training(request, recipe, callbacks, reward, preset)


def _claim_work_dir(work_dir: Path, request: TrainRequest, recipe: Recipe, preset: MethodPreset, data_sha256: str,
                    write: bool) -> None:
    """Record what WORK_DIR trains, by content; refuse to resume a run made from anything else.

    A run is its data (the manifest checksum), its initial weights (checkpoint_sha256), method, seed and recipe:
    new data or a new model at the same path must not resume from checkpoints trained on the old ones.
    """
    path = work_dir / RUN_FILE
    current = {"model_sha256": checkpoint_sha256(request.model, cache=work_dir / MODEL_CACHE),
               "data_sha256": data_sha256, "method": dataclasses.asdict(preset), "seed": request.seed,
               # keys that do not change what is trained (micro-batch, sleep mode, max_steps, ...) stay out
               "recipe": run_identity(dataclasses.asdict(recipe))}
    if path.is_file():
        recorded = json.loads(path.read_text())
        recorded["recipe"] = run_identity(recorded.get("recipe") or {})  # older claims recorded every key
        changed = sorted(k for k in current if json.dumps(recorded.get(k), sort_keys=True)
                         != json.dumps(current[k], sort_keys=True))
        if changed:
            raise TrainError(f"{work_dir}: refusing to resume: its checkpoints were trained with a different "
                             f"{', '.join(changed)} ({path}); use another --work-dir or remove this one")
    elif write:
        write_json_atomic(path, current)  # every rank reads it: never half-written


def load_policy_checked(model_dir: Path, args):
    """The policy as TRL would load it from ``model_dir`` (inside DeepSpeed's ZeRO-3 init when configured), refusing
    a checkpoint that leaves any weight missing, unexpected or of another shape: transformers then initialises the
    missing ones randomly, prints a load report and goes on, and the run would train a model that is not the base."""
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(args.model_init_kwargs or {})
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # as TRL does: distributed training needs the whole model on each rank's device
    model, report = create_model_from_path(str(model_dir), output_loading_info=True, **kwargs)
    problems = {kind: sorted(str(key) for key in report.get(kind) or []) for kind in
                ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                           f" ({len(keys)})" for kind, keys in problems.items())
        raise TrainError(f"{model_dir}: the checkpoint does not load cleanly into "
                         f"{type(model).__name__} ({detail}); refusing to train from partly random weights")
    args.model_init_kwargs = None  # used here; TRL would warn that a loaded model ignores them
    return model


def _deepspeed_pure_gloo() -> None:
    """DeepSpeed on CPU all-reduces over gloo alone: its shared-memory op would be compiled with g++ at the first
    start (minutes on a small machine, again whenever another ninja is on PATH). ``VPPO_DEEPSPEED_SHM=1`` keeps it."""
    if os.environ.get("VPPO_DEEPSPEED_SHM") == "1":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@dataclass
class PreparedRun:
    """A trainer ready to ``train()``, with what the summary needs."""

    trainer: Any
    preset: MethodPreset
    data_info: dict
    resume: Path | None
    tracking: dict
    stop: Any  # vppo.training.time_limit.SaveBeforeTimeLimit


def build_trainer(request: TrainRequest, recipe: Recipe, reward=None, callbacks: list | None = None,
                  preset: MethodPreset | None = None) -> PreparedRun:
    """Check the inputs, load processor and data (prompts over max_prompt_length dropped), build the trainer
    (``preset``: the request's method resolved against ``recipe``, by default resolved here)."""
    from vppo.data.train_data import load_train_dataset
    from vppo.modeling import load_processor, processor_family
    from vppo.training.checkpoints import last_complete_checkpoint
    from vppo.training.images import with_training_images
    from transformers.trainer_callback import ProgressCallback

    from vppo.training.metrics import CompactProgressCallback, JsonlLogCallback
    from vppo.training.time_limit import SaveBeforeTimeLimit
    from vppo.training.balance import DEFAULT_ROLLOUT_LAYOUT
    from vppo.training.trainer import VPPOTrainer

    verify_checkpoint_dir(request.model)
    preset = preset or method_preset(request.method, recipe)

    if recipe.distributed == "deepspeed_zero3" and recipe.gpus_per_node == 0:
        _deepspeed_pure_gloo()
    args = build_config(request, recipe, preset)  # before the model: DeepSpeed ZeRO-3 partitions at load time
    work_dir = Path(request.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Data or weights edited in place must not resume a run: checked at every start, read once per job and again
    # only where a file changed (size or mtime; vppo.training.startup)
    with once_per_job(args):
        inputs = check_inputs(request.model, request.data, work_dir)
    data_sha256 = inputs.data_sha256
    # The checkpoint's own processor, as vLLM builds it: the images are already inside the recipe's bounds.
    processor = load_processor(request.model)
    dataset = load_train_dataset(request.data, verify_images=False)  # check_inputs verified every image
    lengths = prompt_token_counts(dataset, processor, recipe.min_pixels, recipe.max_pixels, inputs.image_sizes)
    keep = [i for i, n in enumerate(lengths) if n <= recipe.max_prompt_length]
    if not keep:
        raise TrainError(f"{request.data}: every prompt is longer than max_prompt_length={recipe.max_prompt_length}")
    if len(keep) < len(dataset):
        logger.warning("%d of %d prompts exceed max_prompt_length=%d and are skipped",
                       len(dataset) - len(keep), len(dataset), recipe.max_prompt_length)
        dataset = dataset.select(keep)
    dataset = with_training_images(dataset, recipe.min_pixels, recipe.max_pixels)
    data_info = {"path": str(request.data), "sha256": data_sha256, "rows": len(lengths),
                 "rows_used": len(keep), "dropped_long_prompts": len(lengths) - len(keep)}

    # A work dir made from other inputs is refused before the (long) model load; it is claimed only once the model
    # loaded cleanly, so a refused checkpoint, replaced at the same path, can still start in it (the second call
    # reads the model's checksum from the work dir's cache).
    _claim_work_dir(work_dir, request, recipe, preset, data_sha256, write=False)
    model = load_policy_checked(request.model, args)
    _claim_work_dir(work_dir, request, recipe, preset, data_sha256, args.process_index == 0)
    resume = last_complete_checkpoint(work_dir)
    resumed_step = int(resume.name.split("-")[-1]) if resume else 0
    trainer = VPPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=processor, preset=preset,
        tas_group_responses=recipe.tas_group_responses, rollout_layout=recipe.rollout_layout or DEFAULT_ROLLOUT_LAYOUT,
        max_sampling_rounds=recipe.dynamic_sampling_max_rounds, reward=reward,
        masking_params=processor_family(processor).masking_params(preset.masking),  # the model's patch square
        callbacks=[JsonlLogCallback(work_dir / LOG_FILE, resumed_step),
                   *progress_callbacks(work_dir, request.tracking_name, resumed_step, args), *(callbacks or [])])
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgressCallback())
    tracking = attach_trackers(trainer, work_dir, request.tracking_name, resumed_step)
    stop = SaveBeforeTimeLimit(trainer._any_process, args.process_index == 0, recipe.updates_per_rollout,
                               request.save_margin_s)
    trainer.add_callback(stop)
    return PreparedRun(trainer=trainer, preset=preset, data_info=data_info, resume=resume, tracking=tracking,
                       stop=stop)


#: What a TRL checkpoint holds beyond what ``Trainer.save_model`` writes: the state only a resume needs.
RESUME_ONLY = ("optimizer*.pt", "optimizer_*", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json")


def _final_from_checkpoint(checkpoint: Path, final: Path) -> None:
    """``final/`` as ``save_model`` would have written it at the checkpoint's step (same weights, same format)."""
    resume_only = {p.name for pattern in RESUME_ONLY for p in checkpoint.glob(pattern)}
    shutil.copytree(checkpoint, final, ignore=lambda folder, names: resume_only if Path(folder) == checkpoint else [])


def _run_training(request: TrainRequest, recipe: Recipe, callbacks, reward, preset: MethodPreset | None = None) -> Path:
    from transformers.trainer_callback import TrainerState

    from vppo.training.checkpoints import TRAINER_STATE, weights_format

    start = time.perf_counter()
    out, work_dir = Path(request.out), Path(request.work_dir)
    if (out / SUMMARY_FILE).is_file():
        raise TrainError(f"{out}: already holds a finished run ({SUMMARY_FILE}); remove it to train again")
    refuse_existing_output(out)  # before hours of training: OUT is never ours to empty
    require_writable(out, "--out")  # ... and a place that cannot take it fails now, not when publishing
    require_writable(work_dir, "--work-dir")
    run = build_trainer(request, recipe, reward, callbacks, preset)
    trainer, resume = run.trainer, run.resume
    staging = out.parent / f".{out.name}.partial"
    if trainer.accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    done_step = int(resume.name.split("-")[-1]) if resume else 0
    if recipe.max_steps is not None and done_step > recipe.max_steps:
        raise TrainError(f"{resume}: already past max_steps={recipe.max_steps}; raise --max-steps or use another "
                         "--work-dir")
    if recipe.max_steps is not None and done_step == recipe.max_steps:
        # Finished, but not published (killed while publishing, OUT deleted, a retry): resuming would train
        # one step more, so the final weights are the last checkpoint's.
        logger.warning("%s is at max_steps: publishing it without training", resume)
        trainer.state = TrainerState.load_from_json(str(resume / TRAINER_STATE))
        if trainer.accelerator.is_main_process:
            _final_from_checkpoint(resume, staging / FINAL_DIR)
    else:
        if resume:
            logger.warning("resuming from %s", resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if run.stop.stopped_at is not None:
            trainer.accelerator.wait_for_everyone()  # every rank's part of the checkpoint is written
            raise StoppedBeforeLimit(run.stop.stopped_at, work_dir / f"checkpoint-{run.stop.stopped_at}",
                                     run.stop.reason)
        trainer.save_model(str(staging / FINAL_DIR))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        shutil.copyfile(work_dir / LOG_FILE, staging / LOG_FILE)
        summary = _summary(request, recipe, run.preset, trainer, run.data_info, time.perf_counter() - start, resume,
                           weights_format(staging / FINAL_DIR), run.tracking)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_if_absent_or_empty(staging, out)
    trainer.accelerator.wait_for_everyone()
    return out
