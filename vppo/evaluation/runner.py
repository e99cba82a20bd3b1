"""Drive lmms-eval's own evaluator over our ``benchmarks/`` tasks and write the vppo.eval/1 result files.

One model load per process; then, benchmark by benchmark, ``lmms_eval.evaluator.simple_evaluate`` with the
loaded model and the task object (so each benchmark has its own wall time and its result files are written as
soon as it finishes; a rerun skips benchmarks whose results match the request: long runs resume). Before each
run the task's effective configuration is checked against the protocol (:func:`protocol_violations`); after it,
the numbers are recomputed from lmms-eval's per-sample logs and must agree with lmms-eval's own aggregate.

``--out`` holds one model's results (:mod:`vppo.evaluation.outputs`): a file there that is not our result, or
our result for another model, is never replaced (``--overwrite`` replaces our own results only), and a run
refused or failed before its first result leaves no ``--out`` behind.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vppo.errors import InputError
from vppo.catalog import Benchmark
from vppo.data.eval_data import EvalDataError, data_checksum, read_manifest
from vppo.evaluation import tasklib
from vppo.evaluation.protocol import PROTOCOL_SAMPLING, ScoredQuestion, Sampling, avg_at_k, avg_at_k_stderr
from vppo.eval_images import protocol_image_bounds
from vppo.model_families import DEFAULT_FAMILY
from vppo.evaluation.registry import BACKENDS
from vppo import package_versions
from vppo.evaluation.outputs import CHECKPOINT_HASH_CACHE, OutputClaim, claim_output
from vppo.evaluation.results import SCHEMA, validate_result
from vppo.fileio import write_json_atomic, write_jsonl_atomic
from vppo.modeling import checkpoint_sha256, verify_checkpoint_dir

#: The lmms-eval filter ensemble named in benchmarks/_default_template_yaml.
FILTER_NAME = "all_k"
TASKS_DIR_ENV = "VPPO_BENCHMARKS_DIR"
UNSPECIFIED_METHOD = "unspecified"  # the method recorded without --method-label


class ProtocolError(InputError, RuntimeError):
    """The task configuration lmms-eval would run differs from the protocol (names the task and the field)."""


@dataclass
class EvalRequest:
    checkpoint: Path
    data: Path
    benchmarks: list[Benchmark]
    out: Path
    backend: str = "hf"
    samples: int = PROTOCOL_SAMPLING.n
    max_new_tokens: int = PROTOCOL_SAMPLING.max_new_tokens
    limit: int | None = None
    seed: int = 0
    model_label: str | None = None
    method_label: str | None = None
    batch_size: int | None = None  # None: the backend's own default (hf 8, vllm 512 questions per call)
    tensor_parallel_size: int | None = None
    tasks_dir: Path | None = None
    overwrite: bool = False

    @property
    def sampling(self) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, n=self.samples)

    @property
    def labels(self) -> tuple[str, str]:
        """(model, method) recorded in the results: the labels given, else the checkpoint folder's name."""
        return self.model_label or self.checkpoint.name, self.method_label or UNSPECIFIED_METHOD


def default_tasks_dir() -> Path:
    env = os.environ.get(TASKS_DIR_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "benchmarks"
    if not (path / "_default_template_yaml").is_file():
        raise InputError(f"{path}: not the vppo benchmarks task folder (no _default_template_yaml); "
                                f"pass --tasks-dir or set {TASKS_DIR_ENV}")
    return path


# ------------------------------------------------------------------------------------------- protocol

def apply_overrides(task, sampling: Sampling) -> None:
    """Set the two protocol values the command line exposes (k and max new tokens) on a loaded task."""
    from lmms_eval.filters import build_filter_ensemble

    task.set_config("repeats", sampling.n)
    task.set_config("generation_kwargs", {"max_new_tokens": sampling.max_new_tokens}, update=True)
    # lmms-eval keeps the built filter pipelines on the task; rebuild ours for k (same name as in the YAML).
    task._filters = [build_filter_ensemble(FILTER_NAME, [["take_first_k", {"k": sampling.n}]])]


def protocol_violations(task, sampling: Sampling) -> list[str]:
    """Every way the task as lmms-eval will run it differs from the avg@8 protocol with ``sampling``."""
    from lmms_eval.api.reasoning import parse_reasoning_tags_config
    from lmms_eval.filters.selection import TakeKFilter

    cfg = task.config
    gen = cfg.generation_kwargs or {}
    problems = []
    expected = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                "max_new_tokens": sampling.max_new_tokens, "repetition_penalty": sampling.repetition_penalty,
                "do_sample": True}
    problems += [f"generation_kwargs.{k} = {gen.get(k)!r}, protocol {v!r}" for k, v in expected.items() if gen.get(k) != v]
    if [s for s in gen.get("until") or [] if s]:
        problems.append(f"generation_kwargs.until = {gen.get('until')!r}: the protocol stops at end-of-turn only")
    if cfg.repeats != sampling.n:
        problems.append(f"repeats = {cfg.repeats}, protocol {sampling.n}")
    filters = [(e.name, [(type(f).__name__, getattr(f, "k", None)) for f in e.filters]) for e in task._filters]
    if filters != [(FILTER_NAME, [(TakeKFilter.__name__, sampling.n)])]:
        problems.append(f"filters = {filters}: the protocol scores all {sampling.n} samples (take_first_k k={sampling.n})")
    if parse_reasoning_tags_config(None, cfg.reasoning_tags) is not None or cfg.auto_strip_thinking:
        problems.append(f"reasoning_tags = {cfg.reasoning_tags!r}: the protocol never strips <think> blocks")
    if cfg.process_results is not tasklib.process_results:
        problems.append("process_results is not vppo.evaluation.tasklib.process_results (mathruler grading)")
    return [f"{cfg.task}: {p}" for p in problems]


def model_violations(lm) -> list[str]:
    """Every way the loaded model adapter differs from the protocol: today its image processor's pixel bounds
    (``lm.image_bounds``, which each backend sets from the protocol of the checkpoint's model family
    (``lm.model_family``) whatever the checkpoint says)."""
    bounds, protocol = getattr(lm, "image_bounds", None), getattr(lm, "model_family", DEFAULT_FAMILY).processor_bounds
    if bounds != protocol:
        return [f"model {type(lm).__name__}: image processor bounds {bounds}, protocol {protocol}"]
    return []


# ------------------------------------------------------------------------------------------- results

def scored_questions(logged_samples: list[dict], k: int, task: str) -> list[tuple[dict, ScoredQuestion]]:
    """(our per-question record, scored responses) from lmms-eval's log; every question must have k samples."""
    out = []
    for sample in logged_samples:
        record = sample[tasklib.METRIC]
        raw = sample["resps"][0] if sample["resps"] and isinstance(sample["resps"][0], list) else sample["resps"]
        if not (len(raw) == len(record["correct"]) == len(record["extracted"]) == k):
            raise RuntimeError(f"{task}: row {record['row_id']} has {len(raw)} responses / {len(record['correct'])} "
                               f"scores, expected {k}")
        out.append((record, ScoredQuestion(list(raw), record["extracted"], record["correct"])))
    return out


def build_result(req: EvalRequest, bench: Benchmark, questions, lmms_results: dict, *, checkpoint_hash: str,
                 data_hash: str, bad_rows: list, image_bounds, wall_time_s: float,
                 extra: dict, model_family: str = DEFAULT_FAMILY.key) -> tuple[dict, list[dict]]:
    correct = [q.correct for _, q in questions]
    accuracy = 100.0 * avg_at_k(correct)
    stderr = 100.0 * avg_at_k_stderr(correct)
    metrics = lmms_results["results"][bench.task]
    lmms_value = metrics.get(f"{tasklib.METRIC},{FILTER_NAME}")
    if lmms_value is None or abs(float(lmms_value) - accuracy) > 1e-6:
        raise RuntimeError(f"{bench.task}: lmms-eval aggregated {lmms_value!r}, per-sample logs give {accuracy}")
    result = {
        "schema": SCHEMA, "model": req.labels[0], "method": req.labels[1],
        "benchmark": bench.key, "task": bench.task, "metric": f"avg@{req.samples}", "k": req.samples,
        "accuracy": accuracy, "stderr": stderr, "n_questions": len(questions), "n_samples": sum(map(len, correct)),
        "bad_rows": len(bad_rows), "bad_row_details": [b.as_dict() for b in bad_rows], "backend": req.backend,
        "versions": package_versions(), "sampling": req.sampling.as_dict(), "seed": req.seed, "limit": req.limit,
        "checkpoint": str(req.checkpoint.resolve()), "checkpoint_sha256": checkpoint_hash,
        "data": {"path": str(req.data.resolve()), "sha256": data_hash}, "wall_time_s": round(wall_time_s, 3),
        "samples_file": f"{bench.key}.samples.jsonl", "image_bounds": protocol_image_bounds(image_bounds),
        "model_family": model_family,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lmms_eval": {"task_version": lmms_results["versions"].get(bench.task), "metric": lmms_value,
                      "stderr_clt": metrics.get(f"{tasklib.METRIC}_stderr_clt,{FILTER_NAME}"), "filter": FILTER_NAME},
        **extra,
    }
    lines = [{"row_id": rec["row_id"], "answer": rec["answer"], "responses": q.responses, "extracted": q.extracted,
              "correct": q.correct} for rec, q in questions]
    return validate_result(result, f"{bench.key}.json"), lines


def _reusable_result(old: dict | None, path: Path, req: EvalRequest, checkpoint_hash: str,
                     data_hash: str) -> dict | None:
    """``old`` (our finished result at ``path``, already read) if it was made from the same inputs, else None."""
    if old is None:
        return None
    same = (old["checkpoint_sha256"] == checkpoint_hash and old["data"].get("sha256") == data_hash
            and old["sampling"] == req.sampling.as_dict() and old["seed"] == req.seed and old["limit"] == req.limit
            and old["backend"] == req.backend)
    return old if same and (path.parent / old["samples_file"]).is_file() else None


# ------------------------------------------------------------------------------------------- driver

def model_args(req: EvalRequest) -> dict:
    args = {"pretrained": str(req.checkpoint), "max_new_tokens": req.max_new_tokens, "seed": req.seed}
    if req.batch_size is not None:
        args["batch_size"] = req.batch_size
    if req.backend == "vllm":
        args["tensor_parallel_size"] = req.tensor_parallel_size
    return args


def _skip_filelock_patch_if_unsupported() -> None:
    """lmms-eval 0.7.3's simple_evaluate patches ``filelock._api``, which filelock 4 no longer has (ImportError).

    The patch guards nested dataset loads across ranks; our tasks are loaded before simple_evaluate in one
    process, so where filelock cannot be patched we mark the patch as done instead of failing.
    """
    try:
        import filelock._api  # noqa: F401
    except ImportError:
        from lmms_eval import evaluator

        evaluator._enable_reentrant_filelocks._patched = True


def run_eval(req: EvalRequest, log=print) -> dict[str, dict]:
    """Evaluate ``req.checkpoint`` on ``req.benchmarks``; returns ``{benchmark: result}`` (reused or new)."""
    previous = os.environ.get(tasklib.DATA_ENV)
    os.environ[tasklib.DATA_ENV] = str(req.data.resolve())  # read by the task files (benchmarks/*/utils.py)
    claim = OutputClaim(req.out)
    try:
        return _run_eval(req, claim, log)
    except BaseException:
        claim.release_if_unused()  # refused or failed before a result: no --out left behind
        raise
    finally:
        if previous is None:
            os.environ.pop(tasklib.DATA_ENV, None)
        else:
            os.environ[tasklib.DATA_ENV] = previous


def _run_eval(req: EvalRequest, claim: OutputClaim, log) -> dict[str, dict]:
    if req.backend not in BACKENDS:
        raise InputError(f"--backend {req.backend!r}: choose from {', '.join(BACKENDS)}")
    for flag, value in (("--samples", req.samples), ("--max-new-tokens", req.max_new_tokens),
                        ("--limit", 1 if req.limit is None else req.limit),
                        ("--batch-size", 1 if req.batch_size is None else req.batch_size)):
        if value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    verify_checkpoint_dir(req.checkpoint)
    if not req.data.is_dir():
        raise EvalDataError(f"--data {req.data}: no such directory")
    manifest = read_manifest(req.data)
    if manifest is None:  # written last by prepare-data: without it the folder is partial
        raise EvalDataError(f"--data {req.data}: no manifest.json, so not a completely prepared evaluation folder; "
                            "prepare it with `vppo prepare-data eval`")
    prepared = manifest.get("benchmarks", {})
    missing = [b.key for b in req.benchmarks if b.key not in prepared]
    if missing:
        raise EvalDataError(f"--data {req.data}: benchmark(s) {', '.join(missing)} not prepared there (it holds "
                            f"{', '.join(prepared) or 'none'}); prepare them with `vppo prepare-data eval --option "
                            "benchmarks=...`")
    data_hashes = {b.key: data_checksum(req.data, b.key) for b in req.benchmarks}
    for bench in req.benchmarks:  # lmms-eval cannot evaluate an empty task: say so before loading the model
        scan = tasklib.scan(req.data, bench.key)
        if not scan.rows:
            raise EvalDataError(f"--data {req.data}: benchmark {bench.key!r} has no usable row ({len(scan.bad)} bad: "
                                + "; ".join(f"{b.row_id}: {b.reason}" for b in scan.bad[:3]) + ")")
    existing = claim_output(req.out, [b.key for b in req.benchmarks], req.labels, req.overwrite)
    claim.create()
    checkpoint_hash = checkpoint_sha256(req.checkpoint, cache=req.out / CHECKPOINT_HASH_CACHE)
    results: dict[str, dict] = {}
    pending = []
    for bench in req.benchmarks:
        path = req.out / f"{bench.key}.json"
        old = None if req.overwrite else _reusable_result(existing.get(bench.key), path, req, checkpoint_hash,
                                                          data_hashes[bench.key])
        if old is not None:
            log(f"[vppo eval] {bench.key}: reusing {path} (same checkpoint, data, sampling, seed, limit, backend)")
            results[bench.key] = old
        else:
            pending.append(bench)
    if not pending:
        return results

    import datasets
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from vppo.evaluation.registry import register

    datasets.disable_progress_bars()
    _skip_filelock_patch_if_unsupported()
    register()
    started = time.perf_counter()
    model_cls = get_model(BACKENDS[req.backend])
    lm = model_cls.create_from_arg_string("", model_args(req))
    model_load_s = time.perf_counter() - started
    violations = model_violations(lm)
    if violations:
        raise ProtocolError("model configuration differs from the protocol:\n  " + "\n  ".join(violations))
    task_type = "simple" if lm.is_simple else "chat"
    # Only our folder is indexed: lmms-eval's ~2000 built-in tasks cost ~7 s to index and are never used.
    task_manager = TaskManager(verbosity="WARNING", include_path=str(req.tasks_dir or default_tasks_dir()),
                               include_defaults=False)
    for bench in pending:
        started = time.perf_counter()
        task = task_manager.load_task_or_group([bench.task], task_type=task_type)[bench.task]
        apply_overrides(task, req.sampling)
        violations = protocol_violations(task, req.sampling)
        if violations:
            raise ProtocolError("task configuration differs from the protocol:\n  " + "\n  ".join(violations))
        lmms_results = simple_evaluate(
            model=lm, tasks=[task], task_manager=task_manager, limit=req.limit, log_samples=True, bootstrap_iters=0,
            random_seed=req.seed, numpy_random_seed=req.seed, torch_random_seed=req.seed,
            fewshot_random_seed=req.seed, process_docs_parallel=1, verbosity="WARNING")
        questions = scored_questions(lmms_results["samples"][bench.task], req.samples, bench.task)
        bad = tasklib.bad_rows(req.data, bench.key)
        result, lines = build_result(
            req, bench, questions, lmms_results, checkpoint_hash=checkpoint_hash, data_hash=data_hashes[bench.key],
            bad_rows=bad, image_bounds=lm.image_bounds, model_family=getattr(lm, "model_family", DEFAULT_FAMILY).key,
            wall_time_s=time.perf_counter() - started, extra={"model_load_s": round(model_load_s, 3),
                   "tensor_parallel_size": int(getattr(lm, "tensor_parallel_size", 1)),
                   "engine_environment": dict(getattr(lm, "engine_environment", {}))})
        write_jsonl_atomic(req.out / result["samples_file"], lines)
        write_json_atomic(req.out / f"{bench.key}.json", result)  # last: its presence means complete
        log(f"[vppo eval] {bench.key}: avg@{req.samples} {result['accuracy']:.2f} ± {result['stderr']:.2f} "
            f"({result['n_questions']} questions, {result['bad_rows']} without an answer, {result['wall_time_s']:.1f} s)")
        results[bench.key] = result
    return results
