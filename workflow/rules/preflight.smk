# Stage 0, on a node like the GPU jobs' (same partition, one GPU), before any of them is queued: `vppo plan`
# prints the GPU-hours and disk of the configured plan and stops when the free disk is short of its peak
# (docs/cluster.md "Disk and GPU-hours"); then `vppo doctor` checks Python, NVIDIA driver, torch + CUDA, vLLM and
# free disk, in seconds. A failure names what is missing and
# stops the run here instead of after a day in the queue. Its output is an `ancient` input of every GPU rule:
# rerunning the check never reruns finished cells.


from vppo.workflow_plan.data import PLAN_CONFIG, plan_config_text, plan_options, preflight_options


rule preflight:
    output:
        report=PREFLIGHT,
        plan_config=PLAN_CONFIG,
    params:
        options=preflight_options(PLAN),
        plan=plan_options(PLAN),
        plan_config=plan_config_text(PLAN),
    log:
        "logs/preflight/doctor.log",
    benchmark:
        "logs/benchmarks/preflight/doctor.tsv"
    conda:
        GPU_ENV
    threads: 1
    resources:
        **slurm_placement("GPU"),
        nodes=1,
        gpu=1 if PLAN.any_gpu_job() else None,
        cpus_per_task=1,
        mem_mb=4000,
        runtime=10,
    shell:
        "mkdir -p work && printf '%s' {params.plan_config:q} > {output.plan_config:q} && "
        "workflow/scripts/vppo plan {params.plan} > {log} 2>&1 && "
        "workflow/scripts/vppo doctor {params.options} --out {output.report} >> {log} 2>&1"
