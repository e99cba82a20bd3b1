# Stage 1: training data, evaluation data and base / released models. Downloads run on the submit host
# (localrules): compute nodes often have no internet.


from vppo.workflow_plan.data import eval_data_options, train_data_options


localrules:
    prepare_train_data,
    prepare_eval_data,
    fetch_base_model,
    fetch_released_model,


rule prepare_train_data:
    output:
        directory(TRAIN_DATA),
    params:
        source=config["data"]["train"]["source"],
        options=train_data_options(PLAN),
    log:
        f"logs/data/{PRESET}/train.log",
    benchmark:
        f"logs/benchmarks/data/{PRESET}/train.tsv"
    conda:
        GPU_ENV
    threads: 1
    shell:
        "workflow/scripts/vppo prepare-data train --source {params.source:q} --out {output:q} {params.options} > {log:q} 2>&1"


rule prepare_eval_data:
    output:
        directory(EVAL_DATA),
    params:
        source=config["data"]["eval"]["source"],
        options=eval_data_options(PLAN),
    log:
        f"logs/data/{PRESET}/eval.log",
    benchmark:
        f"logs/benchmarks/data/{PRESET}/eval.tsv"
    conda:
        GPU_ENV
    threads: 1
    shell:
        "workflow/scripts/vppo prepare-data eval --source {params.source:q} --out {output:q} {params.options} > {log:q} 2>&1"


rule fetch_base_model:
    output:
        directory("resources/models/{model}/base"),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["base"],
        family=config["model_family"],
    log:
        "logs/models/{model}/base.log",
    benchmark:
        "logs/benchmarks/models/{model}/base.tsv"
    conda:
        GPU_ENV
    threads: 1
    shell:
        "workflow/scripts/vppo fetch-model {params.source:q} {output:q} --family {params.family:q} > {log:q} 2>&1"


rule fetch_released_model:
    output:
        directory("resources/models/{model}/released_{method}"),
    params:
        source=lambda wildcards: MODELS[wildcards.model]["released"][wildcards.method],
        family=config["model_family"],
    log:
        "logs/models/{model}/released_{method}.log",
    benchmark:
        "logs/benchmarks/models/{model}/released_{method}.tsv"
    conda:
        GPU_ENV
    threads: 1
    shell:
        "workflow/scripts/vppo fetch-model {params.source:q} {output:q} --family {params.family:q} > {log:q} 2>&1"
