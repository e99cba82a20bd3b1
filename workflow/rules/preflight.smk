# Stage 0: `vppo doctor` on a node like the GPU jobs' (same partition, one GPU), before any of them is queued:
# Python, NVIDIA driver, torch + CUDA, vLLM and free disk, in seconds. A failure names what is missing and
# stops the run here instead of after a day in the queue. Its output is an `ancient` input of every GPU rule:
# rerunning the check never reruns finished cells.


from vppo.workflow_plan.data import preflight_options


rule preflight:
    output:
        PREFLIGHT,
    params:
        options=preflight_options(PLAN),
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
        "mkdir -p work && workflow/scripts/vppo doctor {params.options} --out {output} > {log} 2>&1"
