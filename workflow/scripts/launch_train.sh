#!/usr/bin/env bash
# Launch `vppo train` with accelerate: one process (CPU smoke, one GPU), one node, or every node of a SLURM
# allocation (one `accelerate launch` per node through srun; vLLM colocated, or on one extra node in server mode).
#
#   workflow/scripts/launch_train.sh [--dry-run] [--port N] -- <vppo train arguments>
#
# The plan (nodes, ranks, accelerate config under workflow/envs/accelerate/) comes from the recipe; see
# vppo/training/launch.py. --dry-run prints the commands.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
configs="$(cd "$here/../envs/accelerate" && pwd)"
# Same interpreter and import path as workflow/scripts/vppo: the checkout's code, wherever it is installed.
export PYTHONPATH="$(cd "$here/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
exec "${VPPO_PYTHON:-${PYTHON:-python3}}" -m vppo.training.launch --config-dir "$configs" "$@"
