"""The vLLM tier: tests that run vLLM's CPU build (vllm-cpu, the cluster's vLLM version) for real.

They run in the vLLM environment (``bash workflow/scripts/install.sh vllm`` -> ``.venv-vllm``), which
``tests/run.sh`` runs after the main suite with ``VPPO_REQUIRE_VLLM=1``: there a missing vLLM is an error.
In an environment without vLLM (the main CPU one) the folder is not collected. It is not named ``vllm``:
pytest puts ``tests/`` on sys.path, and a ``tests/vllm`` folder then passes for an installed vLLM
(``importlib.util.find_spec("vllm")``), which made TRL's version check crash in the main environment.

One engine per module at most: each start costs tens of seconds on 2 cores. The KV cache is kept small
(``VLLM_CPU_KVCACHE_SPACE``, GiB) because the machines are shared, and the engine core runs in the test
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so no engine process can outlive a test.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # shared machines: never pin cores

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("VPPO_REQUIRE_VLLM") == "1":
        raise RuntimeError("tests/vllm_tier: VPPO_REQUIRE_VLLM=1 but vllm is not importable; "
                           "build the environment with `bash workflow/scripts/install.sh vllm`")
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/vllm_tier/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory):
    """``vppo fetch-model tiny-vllm``: the tiny Qwen2.5-VL at the width vLLM's CPU attention accepts."""
    from vppo.data.models import fetch_model

    return fetch_model("tiny-vllm", tmp_path_factory.mktemp("tiny-vllm") / "model")


@pytest.fixture(scope="session")
def vllm_qwen3vl_dir(tmp_path_factory):
    """``vppo fetch-model tiny-qwen3vl-vllm``: the same build of the second model family, Qwen3-VL."""
    from vppo.data.models import fetch_model

    return fetch_model("tiny-qwen3vl-vllm", tmp_path_factory.mktemp("tiny-qwen3vl-vllm") / "model")


#: model family -> the fixture of its vLLM-width tiny model
FAMILY_MODEL_FIXTURES = {"qwen2.5-vl": "vllm_model_dir", "qwen3-vl": "vllm_qwen3vl_dir"}


@pytest.fixture(scope="module", params=list(FAMILY_MODEL_FIXTURES))
def family_model(request):
    """(model family, its vLLM-width tiny model): a test that takes it runs once per family of
    ``vppo.model_families`` (parity and colocate training; the other modules run the first family only)."""
    from vppo.model_families import FAMILIES

    return FAMILIES[request.param], request.getfixturevalue(FAMILY_MODEL_FIXTURES[request.param])


@pytest.fixture(scope="module", autouse=True)
def engines_released_between_modules():
    """Every engine a module made is shut down before the next module starts its own.

    A dropped in-process engine is shut down when the garbage collector reaches it, and its shutdown resets
    vLLM's process-wide groups (``cleanup_dist_env_and_memory``). Left to chance, that happened in the middle of
    the next module's engine start ("world group is not initialized"), depending on what ran before.
    """
    import gc

    gc.collect()
    yield
    gc.collect()
