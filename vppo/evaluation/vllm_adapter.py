"""``vppo_vllm``: an lmms-eval chat model on vLLM's offline engine, one request per question with n = k.

lmms-eval's own vLLM backend refuses ``n > 1`` and sends the k repeats as k cloned requests, and it takes
``max(task, model)`` new tokens. Here the k repeats of a question become ONE request with
``SamplingParams(n=k)``, so vLLM prefills the prompt (image included) once and samples k continuations; the
task's max_new_tokens is used as given. Prompts are built with the checkpoint's processor chat template exactly
as the transformers backend builds them (``vppo.rollout.chat_prompt``), images passed as ``multi_modal_data``.

Runs for real in the vLLM test tier (``tests/vllm_tier``: vLLM's CPU build, the cluster's version) on the
tiny model: same result files as ``vppo_hf``, same prompt ids and per-token log-probs as the transformers
forward pass. Tensor parallelism and the GPU memory settings are exercised on GPUs only. ``engine=`` and
``sampling_params_cls=`` let the main CPU suite test request building and fan-out without vLLM;
``bench/bench_eval_vllm.py`` measures n=k against k cloned requests and against transformers ``generate``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from vppo.evaluation.protocol import PROTOCOL_ENGINE_LIMITS, PROTOCOL_SAMPLING, Sampling
from vppo.evaluation.requests import GenerationJob, build_job, fan_out, group_repeats, truncate_at_stop
from vppo.model_families import family_of_dir
from vppo.modeling import load_processor, verify_checkpoint_dir
from vppo.rollout import chat_prompt

#: Weights per GPU above which the tensor-parallel size doubles (bf16 weights; the rest is KV cache).
WEIGHT_BUDGET_PER_GPU = 30 * 1024**3


def auto_tensor_parallel_size(checkpoint: str | Path, n_gpus: int) -> int:
    """Smallest power of two that keeps each GPU's share of the weights under the budget, that divides the
    attention heads, and that the visible GPUs allow (7B -> 1, 32B -> 4 on 4+ GPUs)."""
    path = Path(checkpoint)
    weight_bytes = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    config = json.loads((path / "config.json").read_text())
    heads = int((config.get("text_config") or config).get("num_attention_heads", 1))
    tp = 1
    while weight_bytes / tp > WEIGHT_BUDGET_PER_GPU and tp * 2 <= max(n_gpus, 1):
        tp *= 2
    while tp > 1 and heads % tp:
        tp //= 2
    return tp


def engine_context_length(checkpoint: str | Path, wanted: int) -> int:
    """``wanted`` capped at the checkpoint's own context (vLLM refuses a max_model_len above it)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    limit = (config.get("text_config") or config).get("max_position_embeddings") or config.get("max_position_embeddings")
    return min(int(wanted), int(limit)) if limit else int(wanted)


def request_seed(seed: int, key: tuple) -> int:
    """Per-question seed: a question's k samples do not depend on batching or on the other questions."""
    return int(hashlib.sha256(f"{seed}/{'/'.join(map(str, key))}".encode()).hexdigest()[:8], 16)


def sampling_params_kwargs(sampling: Sampling, seed: int) -> dict:
    """vLLM ``SamplingParams`` arguments of one request; every protocol value explicit (vLLM would otherwise
    take defaults from the checkpoint's generation_config)."""
    return {"n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
            "repetition_penalty": sampling.repetition_penalty, "max_tokens": sampling.max_new_tokens, "seed": seed,
            "skip_special_tokens": True}


def platform_engine_kwargs(on_cpu: bool) -> dict:
    """Engine settings a platform needs beyond the protocol's: on CPU, no prompt is ever split across steps.

    With chunked prefill (vLLM's default) a step whose token budget (``max_num_batched_tokens``, 4096 on CPU) runs
    out mid-prompt prefills that prompt partly; the token sampled for it is discarded and its seeded generator
    rewound with ``Generator.set_offset``, which only CUDA generators have. Every request here is seeded
    (:func:`request_seed`), so on vLLM 0.31's CPU build any call whose prompts exceed the budget stopped with
    "CPU Generator does not use offset". Without chunked prefill the scheduler takes a prompt whole or leaves it
    for the next step (and raises the budget to at least ``max_model_len``, so every prompt fits). GPUs keep
    vLLM's defaults: their generators rewind, and chunked prefill is their throughput setting. (vLLM warns that
    the model "does not officially support disabling chunked prefill"; the vLLM tier's evaluations run with it.)
    """
    return {"enable_chunked_prefill": False} if on_cpu else {}


#: vLLM's CPU build reserves ``gpu_memory_utilization`` of the host's memory for its KV cache unless
#: ``VLLM_CPU_KVCACHE_SPACE`` (GiB) says otherwise, and refuses to start when less than that is free (0.9 of a
#: machine that runs anything else), and it pins one core per OpenMP thread. So on CPU, unless the user set them:
#: a 1 GiB KV cache (the tiny and mini models' needs many times over; a larger model on CPU needs it raised) and
#: no pinning (shared machines). Each result records the values under ``engine_environment``.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def cpu_engine_environment(environ=None) -> dict:
    """Set :data:`CPU_ENGINE_ENV`'s defaults in ``environ`` (``os.environ``) where unset; returns the values in force."""
    import os

    environ = os.environ if environ is None else environ
    for key, value in CPU_ENGINE_ENV.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in CPU_ENGINE_ENV}


class VPPOVLLMModel(lmms):
    is_simple = False

    def __init__(self, pretrained: str, tensor_parallel_size: int | None = None,
                 max_new_tokens: int = PROTOCOL_SAMPLING.max_new_tokens,
                 seed: int = 0, batch_size: int = 512, gpu_memory_utilization: float = 0.9,
                 max_model_len: int = PROTOCOL_ENGINE_LIMITS.max_model_len,
                 max_images_per_prompt: int = PROTOCOL_ENGINE_LIMITS.max_images_per_prompt, engine: Any = None,
                 sampling_params_cls: Any = None, **engine_kwargs: Any) -> None:
        super().__init__()
        self.pretrained = str(verify_checkpoint_dir(pretrained))
        self.engine_environment: dict = {}  # the vLLM settings read from the environment (CPU_ENGINE_ENV)
        self.default_max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self.batch_size_per_gpu = int(batch_size)  # questions per engine call (each with its n samples)
        engine_kwargs.pop("max_batch_size", None)
        engine_kwargs.pop("device", None)
        #: the checkpoint's model family: its processor bounds are the protocol's (vppo.model_families)
        self.model_family = family_of_dir(self.pretrained)
        #: vLLM's processor gets the protocol's pixel bounds, never the checkpoint's saved ones
        self.image_bounds = self.model_family.processor_bounds
        self.processor = load_processor(self.pretrained, self.image_bounds.min_pixels, self.image_bounds.max_pixels)
        if engine is None:
            import torch

            try:
                from vllm import LLM
            except ImportError as exc:
                raise ImportError("the vllm backend needs vLLM, a cluster-only dependency (pip install 'vppo[cluster]'); "
                                  "on CPU machines use --backend hf") from exc

            if tensor_parallel_size in (None, "", "auto", 0):
                tensor_parallel_size = auto_tensor_parallel_size(self.pretrained, torch.cuda.device_count())
            # vLLM's CPU build is what runs where torch sees no GPU
            on_cpu = not torch.cuda.is_available()
            engine_kwargs = {**platform_engine_kwargs(on_cpu), **engine_kwargs}
            if on_cpu:
                self.engine_environment = cpu_engine_environment()
            engine = LLM(model=self.pretrained, tensor_parallel_size=int(tensor_parallel_size), seed=self.seed,
                         gpu_memory_utilization=float(gpu_memory_utilization),
                         max_model_len=engine_context_length(self.pretrained, max_model_len),
                         limit_mm_per_prompt={"image": int(max_images_per_prompt)},
                         mm_processor_kwargs=self.image_bounds.as_dict(), **engine_kwargs)
        if sampling_params_cls is None:
            from vllm import SamplingParams as sampling_params_cls
        self.tensor_parallel_size = int(tensor_parallel_size or 1)
        self.engine = engine
        self.sampling_params_cls = sampling_params_cls

    def clean(self):
        """Keep the engine across lmms-eval evaluations (the runner evaluates benchmark after benchmark)."""

    def build_request(self, job: GenerationJob) -> tuple[dict, Any]:
        """(vLLM prompt dict, SamplingParams) of one question."""
        prompt = {"prompt": chat_prompt(self.processor, job.text, len(job.images))}
        if job.images:
            prompt["multi_modal_data"] = {"image": list(job.images)}
        params = self.sampling_params_cls(**sampling_params_kwargs(job.sampling, request_seed(self.seed, job.key)))
        return prompt, params

    def generate_until(self, requests) -> list[GenerationResult]:
        groups = group_repeats(requests)
        outputs: list[list[GenerationResult]] = []
        for start in range(0, len(groups), self.batch_size_per_gpu):
            chunk = groups[start:start + self.batch_size_per_gpu]
            jobs = [build_job(req, self.task_dict, n, self.default_max_new_tokens) for req, n in chunk]
            prompts, params = zip(*(self.build_request(job) for job in jobs))
            results = self.engine.generate(list(prompts), list(params), use_tqdm=self.rank == 0)
            if len(results) != len(jobs):
                raise RuntimeError(f"vLLM returned {len(results)} outputs for {len(jobs)} prompts")
            for job, result in zip(jobs, results):
                n_prompt = len(getattr(result, "prompt_token_ids", None) or [])
                outputs.append([GenerationResult(truncate_at_stop(c.text, job.stop),
                                                 TokenCounts(input_tokens=n_prompt, output_tokens=len(c.token_ids)))
                                for c in result.outputs])
        return fan_out(groups, outputs)

    def loglikelihood(self, requests):
        raise NotImplementedError("vppo_vllm generates only (the avg@k protocol scores sampled answers)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vppo_vllm answers single-turn questions only")
