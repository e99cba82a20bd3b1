#!/usr/bin/env bash
# The project's one test command (README "Set-up", and .ci/run): install, then the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash workflow/scripts/install.sh test
# The Slurm tier (tests/test_slurm.py) runs a real local Slurm: Debian's slurm-wlm and munge, installed here
# when missing (root; about 15 s after apt-get update).
bash tests/slurm/local_slurm.sh install
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
"${PYTHON:-python3}" -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
if [ "$rc" -eq 5 ]; then echo "tests/run.sh: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
