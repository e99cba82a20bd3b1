#!/usr/bin/env bash
# Installs vppo and its CPU dependencies into the active Python environment (a venv is recommended).
#   bash workflow/scripts/install.sh          # the embedded default run (CPU)
#   bash workflow/scripts/install.sh test     # plus pytest and hypothesis
#   bash workflow/scripts/install.sh vllm     # the vLLM test environment in .venv-vllm (workflow/scripts/install_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
extra="${1:-cpu}"
case "$extra" in
  cpu|test) ;;
  vllm) exec bash workflow/scripts/install_vllm.sh ;;
  *) echo "install.sh: unknown set '$extra' (cpu|test|vllm; the cluster uses environment.yml)" >&2; exit 2 ;;
esac
py="${PYTHON:-python3}"
"$py" -m pip install --quiet --disable-pip-version-check \
  -c workflow/envs/cpu-constraints.txt -e ".[$extra]"
# lmms-eval and timm pull a torchvision wheel that is CUDA-linked and raises on import on CPU machines;
# without it transformers and lmms-eval work (vppo ships an image-only Qwen2.5-VL processor).
if "$py" -m pip show --quiet torchvision >/dev/null 2>&1 && ! "$py" -c "import torchvision" >/dev/null 2>&1; then
  "$py" -m pip uninstall --quiet -y torchvision
fi
"$py" -c "import vppo, torch, transformers, trl; print(f'vppo ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')"
