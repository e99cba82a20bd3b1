"""The Snakemake workflow's plan as plain Python: everything the rule files compute, importable and unit-tested.

``workflow/rules/common.smk`` is the glue: it hands Snakemake's ``config`` to :func:`config.load_config` and
builds one :class:`plan.Plan`; each rule file reads its helpers from the module of the same stage
(``workflow/rules/eval.smk`` <- :mod:`vppo.workflow_plan.eval`, ...). Shared pieces: :mod:`.config` (preset
selection and the checks the schema cannot make), :mod:`.plan` (cells, targets, per-job specs) and
:mod:`.resources` (SLURM resources, host memory, threads). Torch-free: the driver environment that runs
Snakemake has no torch. It sits on the top floor (docs/design.md "Floors"): it reads the study registry and the
training recipes, and nothing in the package imports it.
"""
