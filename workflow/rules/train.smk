# Stage 2: RL training of one (model, method) cell.
#
# Resumable state lives in work/train/{model}/{method} (NOT a declared output: Snakemake deletes declared
# outputs before a job starts and after it fails). A retried or resubmitted job resumes from the last
# checkpoint there; the declared output is written only when training has finished. Helpers:
# vppo/workflow_plan/train.py.
# Failure policy (docs/cluster.md): the trainer saves and exits 75 before the Slurm time limit, holds a lock in the
# work folder against a second writer, and records a failure that a retry would repeat (bad input, out of memory)
# so that Snakemake's retries of it exit at once.
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
        # Save and stop (exit 75) while the job's time left still covers a rollout and the save; the retry resumes.
        save_margin=round(60 * config["train"]["save_margin_minutes"]),
    log:
        "logs/train/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/train/{model}/{method}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.train_spec(wildcards).get("cpus", 1)
    # Retries belong to the head Snakemake, which submits a new job. Inside a cluster job a rule's retries directive
    # overrides the `--retries 0` the job is started with, and the job's own Snakemake would rerun a stopped
    # training in the same allocation, in the minutes the save margin keeps for the save (seen on the local Slurm).
    retries: 0 if workflow.remote_exec else config["train"]["retries"]
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
        "--seed {params.seed:q} --run-name {wildcards.model:q}/{wildcards.method:q}/seed{params.seed:q} "
        "--save-margin {params.save_margin} {params.options} "
        "> {log:q} 2>&1 && {params.prune} >> {log:q} 2>&1"
