"""Training stage: TRL's GRPOTrainer extended with VPPO (masked-image pass, TGF, TAS) and DAPO's online filtering.

Modules: :mod:`.recipes` (schedules), :mod:`.trainer` (the trainer subclass), :mod:`.rewards` (the grader as a
TRL reward), :mod:`.dependency` (masked-image pass), :mod:`.batch` (rollout dict surgery and mini-batch
layout), :mod:`.metrics` (training_log.jsonl), :mod:`.runner` (one run, resume, OUT_DIR), :mod:`.cli`
(``vppo train``), :mod:`.convert` (``vppo convert``), :mod:`.launch` (accelerate / SLURM command plans).
"""
