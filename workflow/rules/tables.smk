# Stage 5: the paper's tables next to our cells, the figures, one report page, and regression checks.
# CPU-only, in the driver environment (pandas, matplotlib), sized as light jobs (light_resources); `vppo check`
# evaluates, so it runs on a GPU. Helpers: vppo/workflow_plan/tables.py.
from vppo.workflow_plan import tables as tables_plan


rule table:
    input:
        lambda wildcards: tables_plan.table_inputs(PLAN, wildcards),
        reference=ancient("results/reference"),
    output:
        md="results/tables/{table}.md",
        csv="results/tables/{table}.csv",
        tex="results/tables/{table}.tex",
    params:
        spec=lambda wildcards: config["tables"][wildcards.table],
        methods=lambda wildcards: ",".join(config["tables"][wildcards.table]["methods"]),
        benchmarks=",".join(BENCHMARKS),
        label=config["label"],
    log:
        "logs/tables/{table}.log",
    benchmark:
        "logs/benchmarks/tables/{table}.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(PLAN, PLAN.light_spec, "CPU"),
    shell:
        "workflow/scripts/vppo tables --table {wildcards.table:q} --model {params.spec[model]:q} "
        "--paper-model {params.spec[paper_model]:q} --methods {params.methods:q} --benchmarks {params.benchmarks:q} "
        "--eval-root results/eval --reference-dir {input.reference:q} --out results/tables/{wildcards.table:q} "
        "--label {params.label:q} > {log:q} 2>&1"


rule figures:
    input:
        training=PLAN.training_runs(),
        analysis=PLAN.analysis_targets(),
        cells=[eval_json(*cell) for cell in PLAN.eval_cells()],
    output:
        directory("results/figures"),
    params:
        label=config["label"],
        models=",".join(MODELS),
        paper_models=tables_plan.paper_model_pairs(PLAN),
        roots=tables_plan.figure_roots(PLAN),
    log:
        "logs/figures.log",
    benchmark:
        "logs/benchmarks/figures.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(PLAN, PLAN.light_spec, "CPU"),
    shell:
        "workflow/scripts/vppo figures {params.roots} --eval-root results/eval "
        "--reference-dir results/reference --models {params.models:q} "
        "{params.paper_models} --out {output:q} --label {params.label:q} > {log:q} 2>&1"


rule report:
    input:
        tables=PLAN.table_files(),
        figures="results/figures",
        study=PLAN.study_targets(),
    output:
        "results/report.html",
    params:
        label=config["label"],
        study="--study results/study" if PLAN.study_targets() else "",
        gpus=tables_plan.gpus_per_job(PLAN),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(PLAN, PLAN.light_spec, "CPU"),
    shell:
        "workflow/scripts/vppo report --tables results/tables --figures {input.figures:q} --eval-root results/eval "
        "--cost-root logs/benchmarks --gpus-per-job {params.gpus:q} --label {params.label:q} {params.study} --out {output:q} "
        "> {log:q} 2>&1"


rule check:
    """`snakemake results/check/NAME.md --config candidate=PATH reference=REF`: wraps `vppo check`.

    The job fails when the candidate regresses; its table is then kept in logs/check/NAME.log."""
    input:
        data=EVAL_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        "results/check/{name}.md",
    params:
        candidate=lambda wildcards: tables_plan.required_config(PLAN, "candidate", wildcards),
        reference=lambda wildcards: tables_plan.required_config(PLAN, "reference", wildcards),
        benchmarks=",".join(BENCHMARKS),
        eval_out="results/check/{name}/eval",
        options=tables_plan.check_options(PLAN),
    log:
        "logs/check/{name}.log",
    benchmark:
        "logs/benchmarks/check/{name}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.check_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(PLAN, PLAN.check_spec),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo check {params.candidate:q} --against {params.reference:q} --data {input.data:q} "
        "--benchmarks {params.benchmarks:q} --eval-out {params.eval_out:q} {params.options} "
        "--report {output:q} 2>&1 | tee {log:q}"


rule study:
    input:
        cells=lambda wildcards: tables_plan.study_cells(PLAN),
        training=lambda wildcards: tables_plan.study_training_runs(PLAN),
        analysis=PLAN.analysis_targets(),
    output:
        md="results/study/study.md",
        csv="results/study/study.csv",
        curves="results/study/training_curves.png",
        curves_csv="results/study/training_curves.csv",
        **({"findings": "results/study/dependency_findings.png"} if config.get("analysis") else {}),
    params:
        models=lambda wildcards: ",".join(config["study"]["models"]),
        methods=lambda wildcards: ",".join(config["study"]["methods"]),
        baseline=lambda wildcards: config["study"]["baseline"],
        start=lambda wildcards: config["study"]["start"],
        benchmarks=",".join(BENCHMARKS),
        label=config["label"],
        analysis=tables_plan.study_analysis_options(PLAN),
    log:
        "logs/study.log",
    benchmark:
        "logs/benchmarks/study.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(PLAN, PLAN.light_spec, "CPU"),
    shell:
        "workflow/scripts/vppo study --models {params.models:q} --methods {params.methods:q} "
        "--baseline {params.baseline:q} --start {params.start:q} --benchmarks {params.benchmarks:q} "
        "--eval-root results/eval --train-root results/train {params.analysis} --out results/study "
        "--label {params.label:q} > {log:q} 2>&1"
