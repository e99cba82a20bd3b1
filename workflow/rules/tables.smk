# Stage 5: the paper's tables next to our cells, the figures, one report page, and regression checks.
# CPU-only, in the driver environment (pandas, matplotlib); `vppo check` evaluates, so it runs on a GPU.


rule table:
    input:
        table_inputs,
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
        **job_resources(cpu_spec, "CPU"),
    shell:
        "workflow/scripts/vppo tables --table {wildcards.table:q} --model {params.spec[model]:q} "
        "--paper-model {params.spec[paper_model]:q} --methods {params.methods:q} --benchmarks {params.benchmarks:q} "
        "--eval-root results/eval --reference-dir {input.reference:q} --out results/tables/{wildcards.table:q} "
        "--label {params.label:q} > {log:q} 2>&1"


rule figures:
    input:
        training=training_runs(),
        analysis=analysis_targets(),
        cells=[eval_json(*cell) for cell in eval_cells()],
    output:
        directory("results/figures"),
    params:
        label=config["label"],
        models=",".join(MODELS),
        paper_models=paper_model_pairs(),
        roots=figure_roots(),
    log:
        "logs/figures.log",
    benchmark:
        "logs/benchmarks/figures.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(cpu_spec, "CPU"),
    shell:
        "workflow/scripts/vppo figures {params.roots} --eval-root results/eval "
        "--reference-dir results/reference --models {params.models:q} "
        "{params.paper_models} --out {output:q} --label {params.label:q} > {log:q} 2>&1"


rule report:
    input:
        tables=table_files(),
        figures="results/figures",
        study=study_targets(),
    output:
        "results/report.html",
    params:
        label=config["label"],
        study="--study results/study" if study_targets() else "",
        gpus=gpus_per_job(),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(cpu_spec, "CPU"),
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
        candidate=lambda wildcards: required_config("candidate", wildcards),
        reference=lambda wildcards: required_config("reference", wildcards),
        benchmarks=",".join(BENCHMARKS),
        eval_out="results/check/{name}/eval",
        options=check_options,
    log:
        "logs/check/{name}.log",
    benchmark:
        "logs/benchmarks/check/{name}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: check_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(check_spec),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo check {params.candidate:q} --against {params.reference:q} --data {input.data:q} "
        "--benchmarks {params.benchmarks:q} --eval-out {params.eval_out:q} {params.options} "
        "--report {output:q} 2>&1 | tee {log:q}"


rule study:
    input:
        cells=lambda wildcards: [eval_json(model, method, bench) for model in config["study"]["models"]
                                 for method in config["study"]["methods"] for bench in BENCHMARKS]
        + [eval_json(*config["study"]["start"].split("/", 1), bench) for bench in BENCHMARKS],
        training=lambda wildcards: study_training_runs(),
        analysis=analysis_targets(),
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
        analysis=study_analysis_options(),
    log:
        "logs/study.log",
    benchmark:
        "logs/benchmarks/study.tsv"
    conda:
        DRIVER_ENV
    threads: 1
    resources:
        **job_resources(cpu_spec, "CPU"),
    shell:
        "workflow/scripts/vppo study --models {params.models:q} --methods {params.methods:q} "
        "--baseline {params.baseline:q} --start {params.start:q} --benchmarks {params.benchmarks:q} "
        "--eval-root results/eval --train-root results/train {params.analysis} --out results/study "
        "--label {params.label:q} > {log:q} 2>&1"
