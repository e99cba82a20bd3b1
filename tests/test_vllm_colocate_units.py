"""The pure parts of the colocated-vLLM fixes (vppo.training.vllm_colocate), without vLLM: one placeholder per
image reaches vLLM, and a prompt vLLM ran differently from the trainer's is named."""

from __future__ import annotations

from vppo.training.vllm_colocate import collapse_image_runs, first_mismatch

PAD, START, END = 5, 3, 4


def test_each_run_of_image_tokens_becomes_one_placeholder():
    ids = [1, 9, START, PAD, PAD, PAD, END, 7, START, PAD, PAD, END, 8]
    assert collapse_image_runs(ids, PAD) == [1, 9, START, PAD, END, 7, START, PAD, END, 8]
    assert collapse_image_runs([1, 2, 3], PAD) == [1, 2, 3]
    assert collapse_image_runs([PAD, PAD], PAD) == [PAD]


def test_a_prompt_vllm_expanded_differently_is_named():
    ours = [[1, START, PAD, PAD, END], [1, START, PAD, END]]
    assert first_mismatch(ours, [list(p) for p in ours], PAD) is None
    # vLLM's second expansion of an already expanded prompt: the first placeholder grew, the rest stayed
    doubled = [[1, START, PAD, PAD, PAD, END], ours[1]]
    message = first_mismatch(ours, doubled, PAD)
    assert message.startswith("prompt 0:") and "2 image tokens" in message and "3 image tokens" in message
    assert "returned 1 prompts for 2" in first_mismatch(ours, ours[:1], PAD)
