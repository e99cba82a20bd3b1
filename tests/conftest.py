"""Shared fixtures: one tiny offline Qwen2.5-VL per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory):
    """The mini study's model with a shorter warm start (100 steps, ~80 s, built once per session): the format is
    learnt (mixed rewards, so online filtering keeps groups), the task barely."""
    from vppo.data.mini_model import build_mini_model

    return build_mini_model(tmp_path_factory.mktemp("mini") / "model", seed=0, warm_start_steps=100)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built tiny random-init Qwen2.5-VL checkpoint directory (seed 0)."""
    from vppo.data.tiny_models import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen") / "model", seed=0)
