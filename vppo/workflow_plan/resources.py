"""SLURM resources of the workflow's jobs: placement, GPUs, host memory sized from the model, runtimes that grow on
retries within the partition's limit, and the threads each process may use.

Every function a rule hands to Snakemake takes ``wildcards`` (and ``attempt`` for runtimes); ``spec`` is a
:class:`vppo.workflow_plan.plan.Plan` method giving a job's {gpus, cpus, mem_mb, runtime, ...}.
"""

from __future__ import annotations

import os

from vppo.training.recipes import Recipe

# Host memory (per node) by stage, from the model's parameter count where a spec gives no mem_mb:
# (bytes per parameter, per process, GB fixed per node). Training: each rank may hold a whole bf16 copy while
# loading (ZeRO-3 partitions only after); evaluation: vLLM stages the bf16 weights in host memory; conversion:
# the gathered float32 state dict plus the float32 model it is loaded into.
HOST_MEMORY = {"train": (2, "per_rank", 64), "eval": (2, "once", 32), "convert": (8, "once", 16)}
DEFAULT_MEM_MB = 4000
DEFAULT_RUNTIME = 60


def host_memory_mb(stage: str, params_b: float, ranks_per_node: int = 1) -> int:
    """MB of host memory a ``stage`` job needs for a model of ``params_b`` billion parameters."""
    bytes_per_param, scope, fixed_gb = HOST_MEMORY[stage]
    copies = ranks_per_node if scope == "per_rank" else 1
    return int((copies * bytes_per_param * params_b + fixed_gb) * 1000)


def memory_mb(plan, stage: str | None, spec):
    """mem_mb from ``spec(wildcards)`` when set, else sized from ``models.<model>.params_b``, else 4000."""
    def resolve(wildcards):
        given = spec(wildcards).get("mem_mb")
        params_b = plan.params_b(getattr(wildcards, "model", None)) if stage else None
        if given or not params_b:
            return given or DEFAULT_MEM_MB
        return host_memory_mb(stage, params_b, max(spec(wildcards).get("gpus_per_node", 1), 1))
    return resolve


def grown_runtime(spec, limit: int):
    """Runtime from ``spec(wildcards)``; retries of preempted or timed-out jobs get more time (up to 3x), never
    past the partition's limit (``cluster.max_runtime``): sbatch refuses a longer -t, and training resumes from
    work/, so a retry needs no longer slot than the first attempt."""
    return lambda wildcards, attempt: min(spec(wildcards).get("runtime", DEFAULT_RUNTIME) * min(attempt, 3), limit)


def slurm_placement(kind: str, environ=None) -> dict:
    """Account and partition of a ``kind`` ("CPU" or "GPU") job: VPPO_SLURM_ACCOUNT, and
    VPPO_SLURM_{GPU,CPU}_PARTITION else VPPO_SLURM_PARTITION; absent keys leave the cluster's defaults."""
    environ = os.environ if environ is None else environ
    placement = {"slurm_account": environ.get("VPPO_SLURM_ACCOUNT"),
                 "slurm_partition": environ.get(f"VPPO_SLURM_{kind}_PARTITION") or environ.get("VPPO_SLURM_PARTITION")}
    return {key: value for key, value in placement.items() if value}


def gres(gpus: int) -> str | None:
    """Per-node GPU request, or None (the resource is then absent) for CPU jobs."""
    return f"gpu:{gpus}" if gpus else None


def job_resources(plan, spec, partition: str = "GPU", stage: str | None = None) -> dict:
    """SLURM resources of a one-node job sized by ``spec(wildcards)`` (gpus, cpus, mem_mb, runtime); ``stage``
    (eval, convert) sizes memory from the model when the spec has no mem_mb. ``nodes=1``: without it Slurm may
    spread ``--gpus=4`` over two nodes."""
    return dict(
        **slurm_placement(partition),
        nodes=1,
        gpu=lambda wildcards: spec(wildcards).get("gpus", 0) or None,
        cpus_per_task=lambda wildcards: spec(wildcards).get("cpus", 1),
        mem_mb=memory_mb(plan, stage, spec),
        runtime=grown_runtime(spec, plan.cluster["max_runtime"]),
    )


def threads_per_process(cpus_per_node: int, recipe: Recipe) -> int:
    """OMP_NUM_THREADS for each training rank: the node's CPUs shared by its ranks and, with vLLM colocated, by
    one engine per tensor-parallel group (its scheduler and tokenizer busy a core of their own). Every rank
    inherits the variable: the node's whole count per rank made 8 ranks run 512 threads on 64 cores."""
    engines = recipe.ranks_per_node // recipe.vllm_tensor_parallel_size \
        if recipe.use_vllm and recipe.vllm_mode == "colocate" else 0
    return max(1, cpus_per_node // (recipe.ranks_per_node + engines))
