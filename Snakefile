# VPPO reproduction: data -> train -> convert -> eval (avg@8) -> tables, figures, report.
#   snakemake --cores all                                  # embedded smoke run (CPU, minutes)
#   snakemake --cores all --config preset=paper            # full reproduction (7B + 32B)
#   snakemake --cores all --profile slurm --config preset=paper   # same, on SLURM
# One table cell: snakemake --cores all results/eval/<model>/<method>/<benchmark>.json
from snakemake.utils import min_version

min_version("9.19")

# The default configuration is loaded only when no --configfile is given: Snakemake merges a CLI
# --configfile into the workflow's configfile key by key, which would leave the tiny model of the
# smoke configuration inside the paper configuration.
if not workflow.overwrite_configfiles:

    configfile: "workflow/config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        PLAN.all_targets(),
    default_target: True
