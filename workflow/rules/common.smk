# Glue between Snakemake and the workflow's plan (vppo/workflow_plan/, unit-tested without Snakemake): the
# configuration chosen and checked, the names every rule file reads, and the wildcard constraints. Each rule file
# takes its own helpers from the module of its stage (eval.smk <- vppo.workflow_plan.eval, ...).
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

# The checkout's vppo, also where Snakemake runs in the driver environment (workflow/envs/driver.yml: Snakemake
# and the SLURM plugin, without the package or torch); vppo.workflow_plan imports no torch.
sys.path.insert(0, workflow.basedir)
from vppo.workflow_plan import config as plan_config
from vppo.workflow_plan.plan import PREFLIGHT, Plan, eval_json
from vppo.workflow_plan.resources import gres, grown_runtime, job_resources, memory_mb, slurm_placement

ROOT = Path(workflow.basedir)
CONFIG_DIR = ROOT / "workflow" / "config"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
RECIPE_DIR = ROOT / "vppo" / "training" / "recipes"
# Rules name their software environment: the driver (Snakemake, pandas, matplotlib) for CPU stages and the
# cluster's pinned GPU environment (the root environment.yml, one copy) for data, training, evaluation and
# analysis. Paths are relative to this rules folder.
DRIVER_ENV = "../envs/driver.yml"
GPU_ENV = "../../environment.yml"
# Every rule runs `workflow/scripts/vppo COMMAND ...` (python -m vppo with this checkout importable).
# Outside conda that is the interpreter running Snakemake (the venv the README installs into); inside the
# rule's conda env it is that env's python3.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    os.environ.setdefault("VPPO_PYTHON", sys.executable)


# The default configuration is loaded only without --configfile (Snakefile); --config preset=NAME swaps it for
# workflow/config/NAME.yaml, the --config values typed by the schema on top. Snakemake's validate fills the
# schema's defaults (the schema, with the registry's enums filled in, goes through a file: validate takes one).
_overrides = plan_config.command_line_config(workflow.config_settings.overwrite_config, SCHEMA)
_selected = plan_config.select_preset(config, _overrides, CONFIG_DIR, bool(workflow.overwrite_configfiles))
config.clear()
config.update(_selected)
plan_config.check_moved_keys(config)
with tempfile.TemporaryDirectory() as _folder:
    _schema = Path(_folder) / SCHEMA.name
    _schema.write_text(yaml.safe_dump(plan_config.filled_schema(SCHEMA, CONFIG_DIR, RECIPE_DIR), sort_keys=False))
    validate(config, str(_schema))
plan_config.check_config(config)

PLAN = Plan(config)
MODELS, BENCHMARKS, EVAL, PRESET = PLAN.models, PLAN.benchmarks, PLAN.eval, PLAN.preset
TRAIN_DATA, EVAL_DATA = PLAN.train_data, PLAN.eval_data


def _alternatives(keys):
    return "|".join(re.escape(k) for k in keys)


wildcard_constraints:
    model=_alternatives(MODELS),
    method=_alternatives(PLAN.all_methods),
    benchmark=_alternatives(BENCHMARKS),
    table=_alternatives(config["tables"]),
    name=r"[A-Za-z0-9._-]+",


# Every compute rule's shell starts with OMP_NUM_THREADS: libraries use the job's CPUs (a cluster job's `threads`
# is capped by the submitting host's --cores; the resource is not), not every core of a shared node; training
# divides them among the ranks of a node (vppo.workflow_plan.train.environment).
