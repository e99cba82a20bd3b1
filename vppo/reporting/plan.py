"""``vppo plan``: the disk and GPU-hours a workflow configuration will need, from the configuration itself.

Disk, per trained run (bytes per parameter P, from ``models.<name>.params_b``; GB = 10^9 bytes):

- one checkpoint as saved: the ZeRO-3 optimizer state, 12 bytes x P (float32 master weights and two Adam
  moments, partitioned over the ranks: ``global_stepN/*optim_states.pt``), plus the consolidated weights that
  ``save_model`` writes into every checkpoint (``zero3_save_16bit_model``), 2 bytes x P in bf16 (4 in float32);
  the per-rank model states, RNG and scheduler files are kilobytes. Measured on the CPU ZeRO-3 run (float32,
  0.55 M parameters, 2 ranks): 12.0 bytes per parameter of optimizer state and 4.0 of weights.
- while training: ``save_total_limit`` (2) checkpoints, plus the next one while it is written (the Trainer
  deletes the oldest after a save): 3 checkpoints at the peak;
- published: ``final/`` (the consolidated weights) and the converted checkpoint (``results/checkpoints``,
  the same weights in the base's dtype, bf16: 2 bytes x P);
- after pruning (``train.prune_work``): one checkpoint stays in the work folder (all that are left otherwise).

The plan's peak assumes every run trains at once (the cluster may well run them together); the base models
(2 bytes x P each, bf16) count once per base. Not counted: data (ViRL39K and the benchmarks, a few GB),
evaluation samples and logs.

GPU-hours: a job's GPUs times its hours. Training: the recipe's nodes x GPUs per node, for the config's
``train_resources.runtime`` (the expected length of the run: it resumes across time-limit slots); evaluation
and analysis: their resources' GPUs for their ``runtime``, a time limit, so an upper bound.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vppo.errors import InputError

OPTIMIZER_BYTES_PER_PARAM = 12  # float32 master weights + Adam's two float32 moments, as DeepSpeed saves them
SAVE_TOTAL_LIMIT = 2  # vppo.training.runner.build_config: checkpoints kept in a work folder
CHECKPOINTS_AT_PEAK = SAVE_TOTAL_LIMIT + 1  # the newest is written before the oldest is deleted
CONVERTED_BYTES_PER_PARAM = 2  # vppo convert writes the base checkpoint's dtype (bf16)
BASE_BYTES_PER_PARAM = 2  # the released Qwen2.5-VL checkpoints are bf16


def weight_bytes_per_param(bf16: bool) -> int:
    return 2 if bf16 else 4


def checkpoint_gb(params_b: float, bf16: bool) -> float:
    """One training checkpoint as saved, in GB: optimizer state + consolidated weights."""
    return params_b * (OPTIMIZER_BYTES_PER_PARAM + weight_bytes_per_param(bf16))


@dataclass(frozen=True)
class RunDisk:
    """The disk one trained run takes, in GB."""

    checkpoint: float
    final: float
    converted: float
    prune: bool

    @property
    def peak(self) -> float:
        return CHECKPOINTS_AT_PEAK * self.checkpoint + self.final + self.converted

    @property
    def kept(self) -> float:
        return (1 if self.prune else SAVE_TOTAL_LIMIT) * self.checkpoint + self.final + self.converted


def run_disk(params_b: float, bf16: bool, prune: bool) -> RunDisk:
    return RunDisk(checkpoint=checkpoint_gb(params_b, bf16), final=params_b * weight_bytes_per_param(bf16),
                   converted=params_b * CONVERTED_BYTES_PER_PARAM, prune=prune)


@dataclass(frozen=True)
class JobGroup:
    """Jobs of one stage and model: how many, GPUs and hours each."""

    stage: str
    model: str
    jobs: int
    gpus: int
    hours: float

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.gpus * self.hours


@dataclass(frozen=True)
class Plan:
    jobs: list[JobGroup]
    runs: dict[str, tuple[int, RunDisk]]  # model -> (trained runs, the disk of each)
    base_gb: float

    @property
    def peak_gb(self) -> float:
        return self.peak_with(None)

    def peak_with(self, runs_at_once: int | None) -> float:
        """The disk peak when at most ``runs_at_once`` runs train together (None: all) and the others are done:
        every run at its kept size, plus the extra of the largest runs that can be mid-save together."""
        extras = sorted((disk.peak - disk.kept for n, disk in self.runs.values() for _ in range(n)), reverse=True)
        return self.kept_gb + sum(extras[:runs_at_once])

    @property
    def kept_gb(self) -> float:
        return self.base_gb + sum(n * disk.kept for n, disk in self.runs.values())

    @property
    def gpu_hours(self) -> float:
        return sum(group.gpu_hours for group in self.jobs)


def plan_from_config(config: dict) -> Plan:
    """The plan of a workflow configuration (a ``workflow/config/*.yaml`` mapping)."""
    from vppo.catalog import UNTRAINED_METHODS
    from vppo.training.recipes import load_recipe

    models = config["models"]
    overrides = (config.get("train") or {}).get("set") or {}
    prune = bool((config.get("train") or {}).get("prune_work", False))
    grouped = bool((config.get("eval") or {}).get("group_benchmarks", False))
    n_benchmarks = 1 if grouped else len(config.get("benchmarks") or [])
    jobs, runs, bases = [], {}, {}
    for name, spec in models.items():
        params_b = float(spec.get("params_b") or 0)
        trained = [m for m in spec["methods"] if m not in UNTRAINED_METHODS and m not in spec.get("released", {})]
        if spec.get("base") not in models:  # a model naming another model's base shares its download
            bases[name] = params_b * BASE_BYTES_PER_PARAM
        if trained:
            recipe = load_recipe(spec["recipe"], overrides)
            train = spec.get("train_resources") or {}
            jobs.append(JobGroup("train", name, len(trained), recipe.num_nodes * recipe.gpus_per_node,
                                 train.get("runtime", 0) / 60))
            runs[name] = (len(trained), run_disk(params_b, recipe.bf16, prune))
        evaluation = spec.get("eval_resources") or {}
        jobs.append(JobGroup("eval", name, len(spec["methods"]) * n_benchmarks, int(evaluation.get("gpus", 0)),
                             evaluation.get("runtime", 0) / 60))
    analysis = config.get("analysis") or {}
    if analysis.get("methods"):
        resources = analysis.get("resources") or {}
        jobs.append(JobGroup("analysis", analysis["model"], len(analysis["methods"]), int(resources.get("gpus", 0)),
                             resources.get("runtime", 0) / 60))
    return Plan(jobs=jobs, runs=runs, base_gb=sum(bases.values()))


def free_gb(path: Path) -> float:
    """Free disk where ``path`` is (or would be created)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def used_gb(paths: list[Path]) -> float:
    """What the plan's own folders hold already (a restarted plan needs that much less free space)."""
    return sum(p.stat().st_size for root in paths if Path(root).exists()
               for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()) / 1e9


def describe(plan: Plan) -> list[str]:
    """The plan as printed lines: one per job group and per trained model's disk, then the totals."""
    lines = [f"{'stage':<9} {'model':<18} {'jobs':>5} {'GPUs':>5} {'hours':>7} {'GPU-hours':>10}"]
    lines += [f"{g.stage:<9} {g.model:<18} {g.jobs:>5} {g.gpus:>5} {g.hours:>7.1f} {g.gpu_hours:>10,.0f}"
              for g in plan.jobs]
    for model, (n, disk) in plan.runs.items():
        lines.append(f"disk {model}: {n} run(s) x (checkpoint {disk.checkpoint:,.0f} GB x {CHECKPOINTS_AT_PEAK} "
                     f"at a save + final {disk.final:,.0f} + converted {disk.converted:,.0f}) = "
                     f"{n * disk.peak:,.0f} GB at the peak, {n * disk.kept:,.0f} GB kept")
    lines.append(f"total: {plan.gpu_hours:,.0f} GPU-hours; disk {plan.peak_gb:,.0f} GB at the peak (every run "
                 f"training at once, base models {plan.base_gb:,.0f} GB included), {plan.kept_gb:,.0f} GB kept")
    return lines


#: Where the workflow writes what the plan counts, relative to its root (a restarted plan has some of it already).
PLAN_FOLDERS = ("work/train", "results/train", "results/checkpoints", "resources/models")


class PlanError(InputError, ValueError):
    """The configuration cannot be planned, or the disk is short; the message names the file or path."""


def read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path}: cannot read the configuration ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("models"), dict):
        raise PlanError(f"{path}: field 'models': missing (not a workflow configuration)")
    return config


def configure(parser) -> None:
    parser.add_argument("--config", type=Path, required=True,
                        help="the workflow configuration, e.g. workflow/config/paper.yaml")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="where the workflow writes work/, results/ and resources/ (default: here)")
    parser.add_argument("--runs-at-once", type=int, default=None,
                        help="the most training runs the cluster runs together (default: every planned run)")


def run(args) -> int:
    import sys

    config = read_config(args.config)
    try:
        plan = plan_from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{args.config}: cannot plan this configuration ({exc})") from None
    if args.runs_at_once is not None and args.runs_at_once < 1:
        raise PlanError(f"--runs-at-once {args.runs_at_once}: must be at least 1")
    print("\n".join(describe(plan)))
    peak = plan.peak_with(args.runs_at_once)
    used = used_gb([args.root / folder for folder in PLAN_FOLDERS])
    free = free_gb(args.root)
    needed = max(peak - used, 0.0)
    if args.runs_at_once is not None:
        print(f"at most {args.runs_at_once} run(s) training at once: disk {peak:,.0f} GB at the peak")
    print(f"disk at {args.root}: {free:,.0f} GB free, {used:,.0f} GB already in the plan's folders, "
          f"{needed:,.0f} GB more needed")
    if free < needed:
        print(f"vppo plan: {args.root}: {free:,.0f} GB free but {args.config} needs {needed:,.0f} GB more at its peak "
              f"({peak:,.0f} GB, {used:,.0f} GB of it written already); free space or plan fewer runs at once",
              file=sys.stderr)
        return 2
    return 0
