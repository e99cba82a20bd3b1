#!/usr/bin/env bash
# The project's one test command (README "Set-up", and .ci/run): install, then the whole suite, in two tiers:
#   1. the main suite in the CPU environment (the active Python), tests/vllm_tier left out;
#   2. the vLLM and distributed tier (tests/vllm_tier) in the vLLM environment .venv-vllm (`install.sh vllm`: the
#      cluster's pins + vLLM's CPU build + DeepSpeed), which it builds or updates first: vLLM evaluation and
#      rollouts, ZeRO-3 on 2 CPU processes, and a two-node launch through Snakemake's SLURM profile (Snakemake runs
#      in the main environment, VPPO_DRIVER_PYTHON; its jobs in .venv-vllm). Both must pass.
# Arguments go to the main suite's pytest. VPPO_SKIP_VLLM_TIER=1 runs tier 1 only (says so, exits with its code).
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/scripts/install.sh test
# The Slurm tier (tests/test_slurm.py) runs a real local Slurm: Debian's slurm-wlm and munge, installed here
# when missing (root; about 15 s after apt-get update).
bash tests/slurm/local_slurm.sh install
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
"${PYTHON:-python3}" -m pytest --ignore=tests/vllm_tier "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
if [ "$rc" -eq 5 ]; then echo "tests/run.sh: pytest collected no tests" >&2; exit 1; fi
if [ "${VPPO_SKIP_VLLM_TIER:-0}" = "1" ]; then
  echo "tests/run.sh: vLLM tier NOT run (VPPO_SKIP_VLLM_TIER=1)" >&2
  exit "$rc"
fi
bash workflow/scripts/install.sh vllm
venv="${VPPO_VLLM_VENV:-.venv-vllm}"
# vLLM's and torch.compile's caches live and die with the run: every run compiles as a fresh machine does.
vllm_cache="$(mktemp -d)"
trap 'rm -rf "$vllm_cache"' EXIT
set +e
VPPO_DRIVER_PYTHON="$(command -v "${PYTHON:-python3}")" \
VPPO_REQUIRE_VLLM=1 VLLM_CACHE_ROOT="$vllm_cache/vllm" TORCHINDUCTOR_CACHE_DIR="$vllm_cache/inductor" \
  "$venv/bin/python" -m pytest -p no:cacheprovider --durations=10 tests/vllm_tier
vrc=$?
set -e
if [ "$vrc" -eq 5 ]; then echo "tests/run.sh: the vLLM tier collected no tests" >&2; exit 1; fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$vrc"
