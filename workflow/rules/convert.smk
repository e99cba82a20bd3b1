# Stage 3: whatever the trainer saved (HF directory or sharded DeepSpeed/FSDP state) -> a standalone
# Hugging Face checkpoint with tokenizer and processor, verified by reloading and comparing logits.


rule convert:
    input:
        trained="results/train/{model}/{method}",
        base=PLAN.base_model_dir,
    output:
        directory("results/checkpoints/{model}/{method}"),
    params:
        # the model card's base model: a hub id becomes its base_model metadata
        base_id=lambda wildcards: MODELS[wildcards.model]["base"],
    log:
        "logs/convert/{model}/{method}.log",
    benchmark:
        "logs/benchmarks/convert/{model}/{method}.tsv"
    conda:
        GPU_ENV
    threads: lambda wildcards: PLAN.convert_spec(wildcards).get("cpus", 1)
    resources:
        **job_resources(PLAN, PLAN.convert_spec, "CPU", stage="convert"),
    shell:
        "OMP_NUM_THREADS={resources.cpus_per_task} workflow/scripts/vppo convert {input.trained:q}/final --out {output:q} --base {input.base:q} --base-id {params.base_id:q} > {log:q} 2>&1"
