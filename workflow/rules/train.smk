# Stage 2: RL training of one (model, method) cell.
#
# Resumable state lives in work/train/{model}/{method} (NOT a declared output: Snakemake deletes declared
# outputs before a job starts and after it fails). A retried or resubmitted job resumes from the last
# checkpoint there; the declared output is written only when training has finished.
# Failure policy (docs/cluster.md): the trainer saves and exits 75 before the Slurm time limit, holds a lock in the
# work folder against a second writer, and records a failure that a retry would repeat (bad input, out of memory)
# so that Snakemake's retries of it exit at once.


rule train:
    input:
        model=base_model_dir,
        data=TRAIN_DATA,
        preflight=ancient(PREFLIGHT),
    output:
        directory("results/train/{model}/{method}"),
    params:
        launch=train_launch_command,
        recipe=lambda wildcards: MODELS[wildcards.model]["recipe"],
        # Editing a recipe file reruns the cells trained with it (imported code is no rerun trigger).
        recipe_sha=lambda wildcards: file_digest(recipe_file(MODELS[wildcards.model]["recipe"])),
        work="work/train/{model}/{method}",
        seed=model_seed,
        options=train_options(),
        prune=prune_command,
        # Save and stop (exit 75) while the job's time left still covers a rollout and the save; the retry resumes.
        save_margin=round(60 * config["train"]["save_margin_minutes"]),
    log:
        "logs/train/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/train/{model}/{method}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: train_spec(wildcards).get("cpus", 1)
    # Retries belong to the head Snakemake, which submits a new job. Inside a cluster job a rule's retries directive
    # overrides the `--retries 0` the job is started with, and the job's own Snakemake would rerun a stopped
    # training in the same allocation, in the minutes the save margin keeps for the save (seen on the local Slurm).
    retries: 0 if workflow.remote_exec else config["train"]["retries"]
    resources:
        **slurm_placement("GPU"),
        nodes=lambda wildcards: train_spec(wildcards).get("nodes", 1),
        gres=lambda wildcards: gres(train_spec(wildcards).get("gpus_per_node", 0)),
        cpus_per_task=lambda wildcards: train_spec(wildcards).get("cpus", 1),
        mem_mb=memory_mb("train", train_spec),
        runtime=grown_runtime(train_spec),
        # Several nodes: the job script itself fans out one launcher per node (docs/cluster.md, the nested-srun section).
        mpi=lambda wildcards: "srun" if is_multi_node(wildcards) else None,
        tasks=lambda wildcards: train_spec(wildcards)["nodes"] if is_multi_node(wildcards) else None,
        tasks_per_gpu=0,
    shell:
        "mkdir -p {params.work:q} && OMP_NUM_THREADS={resources.cpus_per_task} {params.launch} --model {input.model:q} --data {input.data:q} "
        "--recipe {params.recipe:q} --method {wildcards.method:q} --work-dir {params.work:q} --out {output:q} "
        "--seed {params.seed:q} --run-name {wildcards.model:q}/{wildcards.method:q}/seed{params.seed:q} "
        "--save-margin {params.save_margin} {params.options} "
        "> {log:q} 2>&1 && {params.prune} >> {log:q} 2>&1"
