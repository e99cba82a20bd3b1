# Stage 4: avg@k evaluation through lmms-eval. One table cell = results/eval/{model}/{method}/{benchmark}.json
# (+ its per-sample log). `eval.group_benchmarks: true` (the smoke default) evaluates all configured
# benchmarks of a (model, method) in one job to save per-process start-up on CPU; the cluster presets use
# one job per cell, so `snakemake results/eval/<model>/<method>/<benchmark>.json` computes exactly that cell.
# A grouped job evaluates into work/eval/{model}/{method} (not a declared output), so the benchmarks an
# interrupted job finished survive `--rerun-incomplete` and are reused by the rerun. Helpers:
# vppo/workflow_plan/eval.py.
from vppo.workflow_plan import eval as eval_plan


if EVAL.get("group_benchmarks", False):

    rule eval_benchmarks:
        input:
            checkpoint=PLAN.checkpoint_dir,
            data=EVAL_DATA,
            preflight=ancient(PREFLIGHT),
        output:
            results=expand("results/eval/{{model}}/{{method}}/{benchmark}.json", benchmark=BENCHMARKS),
            samples=expand("results/eval/{{model}}/{{method}}/{benchmark}.samples.jsonl", benchmark=BENCHMARKS),
        params:
            benchmarks=",".join(BENCHMARKS),
            out="results/eval/{model}/{method}",
            # Finished benchmarks are kept here, outside the declared outputs that Snakemake deletes when a
            # job fails or is rerun as incomplete: `vppo eval` reuses them, and only they are copied out.
            work="work/eval/{model}/{method}",
            finished=lambda wildcards: eval_plan.finished_files(PLAN, wildcards),
            options=lambda wildcards: eval_plan.eval_options(PLAN, wildcards),
        log:
            "logs/eval/{model}/{method}.log",
        benchmark:
            "logs/benchmarks/eval/{model}/{method}.tsv"
        conda:
            GPU_ENV
        threads: lambda wildcards: PLAN.eval_spec(wildcards).get("cpus", 1)
        retries: EVAL["retries"]
        resources:
            **job_resources(PLAN, PLAN.eval_spec, stage="eval"),
        shell:
            "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo eval {input.checkpoint:q} --data {input.data:q} --benchmarks {params.benchmarks:q} "
            "--out {params.work:q} {params.options} > {log:q} 2>&1 && cp -p {params.finished:q} {params.out:q}/"

else:

    rule eval_benchmark:
        input:
            checkpoint=PLAN.checkpoint_dir,
            data=EVAL_DATA,
            preflight=ancient(PREFLIGHT),
        output:
            result="results/eval/{model}/{method}/{benchmark}.json",
            samples="results/eval/{model}/{method}/{benchmark}.samples.jsonl",
        params:
            out="results/eval/{model}/{method}",
            options=lambda wildcards: eval_plan.eval_options(PLAN, wildcards),
        log:
            "logs/eval/{model}/{method}/{benchmark}.log",
        benchmark:
            "logs/benchmarks/eval/{model}/{method}/{benchmark}.tsv"
        conda:
            GPU_ENV
        threads: lambda wildcards: PLAN.eval_spec(wildcards).get("cpus", 1)
        retries: EVAL["retries"]
        resources:
            **job_resources(PLAN, PLAN.eval_spec, stage="eval"),
        shell:
            "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo eval {input.checkpoint:q} --data {input.data:q} --benchmarks {wildcards.benchmark:q} "
            "--out {params.out:q} {params.options} > {log:q} 2>&1"


rule analyze_dependency:
    input:
        checkpoint=PLAN.checkpoint_dir,
        data=EVAL_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        "results/analysis/{model}/{method}.json",
    params:
        options=lambda wildcards: eval_plan.analysis_options(PLAN, wildcards),
    log:
        "logs/analysis/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/analysis/{model}/{method}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.analysis_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(PLAN, PLAN.analysis_spec),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo analyze {input.checkpoint:q} --data {input.data:q} --out {output:q} {params.options} > {log:q} 2>&1"


rule gradient_variance:
    """Var(g) of VPPO's weightings against GRPO's on the base checkpoint's own rollouts (vppo gradient-variance)."""
    input:
        checkpoint=PLAN.base_model_dir,
        data=TRAIN_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        "results/analysis/{model}/gradient_variance.json",
    params:
        options=lambda wildcards: eval_plan.gradient_variance_options(PLAN, wildcards),
    log:
        "logs/analysis/{model}/gradient_variance.log",
    benchmark:
        "logs/benchmarks/analysis/{model}/gradient_variance.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.analysis_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(PLAN, PLAN.analysis_spec),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo gradient-variance {input.checkpoint:q} "
        "--data {input.data:q} --out {output:q} {params.options} > {log:q} 2>&1"


# The same analysis's responses scored under each dependency pass of `analysis.variants` (masking x estimator),
# each compared with the published patch:k3: does the choice change which tokens TGF keeps?
rule analyze_dependency_variants:
    input:
        checkpoint=PLAN.checkpoint_dir,
        data=EVAL_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        "results/analysis/{model}/{method}.variants.json",
    params:
        options=lambda wildcards: eval_plan.variant_options(PLAN, wildcards),
    log:
        "logs/analysis/{model}/{method}.variants.log",
    benchmark:
        "logs/benchmarks/analysis/{model}/{method}.variants.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.analysis_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(PLAN, PLAN.analysis_spec),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo analyze {input.checkpoint:q} --data {input.data:q} --out {output:q} {params.options} > {log:q} 2>&1"
