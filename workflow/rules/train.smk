# Stage 2: RL training of one (model, method) cell.
#
# Resumable state lives in work/train/{model}/{method} (NOT a declared output: Snakemake deletes declared
# outputs before a job starts and after it fails). A retried or resubmitted job resumes from the last
# checkpoint there; the declared output is written only when training has finished. Helpers:
# vppo/workflow_plan/train.py.
from vppo.workflow_plan import train as train_plan


rule train:
    input:
        model=PLAN.base_model_dir,
        data=TRAIN_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        directory("results/train/{model}/{method}"),
    params:
        launch=lambda wildcards: train_plan.launch_command(PLAN, wildcards),
        recipe=lambda wildcards: MODELS[wildcards.model]["recipe"],
        recipe_sha=lambda wildcards: train_plan.recipe_digest(PLAN, wildcards),
        work="work/train/{model}/{method}",
        seed=lambda wildcards: train_plan.model_seed(PLAN, wildcards),
        options=train_plan.train_options(PLAN),
        prune=lambda wildcards: train_plan.prune_command(PLAN, wildcards),
        # OMP_NUM_THREADS per rank; the network interface when the profile sets the socket_ifname resource
        # (docs/cluster.md).
        environment=lambda wildcards, resources: train_plan.environment(PLAN, wildcards,
                                                                        resources.get("socket_ifname")),
    log:
        "logs/train/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/train/{model}/{method}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.train_spec(wildcards).get("cpus", 1)
    retries: config["train"]["retries"]
    resources:
        **slurm_placement("GPU"),
        nodes=lambda wildcards: PLAN.train_spec(wildcards).get("nodes", 1),
        gres=lambda wildcards: gres(PLAN.train_spec(wildcards).get("gpus_per_node", 0)),
        cpus_per_task=lambda wildcards: PLAN.train_spec(wildcards).get("cpus", 1),
        mem_mb=memory_mb(PLAN, "train", PLAN.train_spec),
        runtime=grown_runtime(PLAN.train_spec, PLAN.cluster["max_runtime"]),
        # Several nodes: the job script itself fans out one launcher per node (docs/cluster.md, the nested-srun section).
        mpi=lambda wildcards: "srun" if train_plan.is_multi_node(PLAN, wildcards) else None,
        tasks=lambda wildcards: PLAN.train_spec(wildcards)["nodes"] if train_plan.is_multi_node(PLAN, wildcards) else None,
        tasks_per_gpu=0,
    shell:
        "mkdir -p {params.work:q} && {params.environment} {params.launch} --model {input.model:q} --data {input.data:q} "
        "--recipe {params.recipe:q} --method {wildcards.method:q} --work-dir {params.work:q} --out {output:q} "
        "--seed {params.seed:q} --run-name {wildcards.model:q}/{wildcards.method:q}/seed{params.seed:q} {params.options} "
        "> {log:q} 2>&1 && {params.prune} >> {log:q} 2>&1"
