"""The warm-started tiny model (`vppo fetch-model tiny-warm`): deterministic, answers in the paper's format.

A random-init model never writes ``\\boxed{}``, so every smoke-run reward would be 0; the warm start makes it
guess well-formed answers from each question's answer set, at about chance accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

import pytest
import torch

from vppo.data.eval_data import parse_sharegpt_row
from vppo.data.eval_fixtures import _fixture_question, _sharegpt
from vppo.data.train_data import synthetic_example, training_prompt
from vppo.modeling import load_policy, load_processor
from vppo.reward import extract_answer
from vppo.rollout import encode_prompts, split_generation
from vppo.data import tiny_models
from vppo.data.tiny_models import WARM_START_STEPS, build_tiny_qwen

#: The smoke configuration's generation budget (workflow/config/default.yaml eval.max_new_tokens, recipe smoke).
SMOKE_MAX_NEW_TOKENS = 16


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory):
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-warm") / "model", seed=0, warm_start_steps=WARM_START_STEPS)


@pytest.fixture(scope="module")
def warm_policy(warm_dir):
    return load_policy(warm_dir).eval(), load_processor(warm_dir)


def test_warm_build_is_deterministic_and_records_its_settings(tmp_path, warm_dir):
    again = build_tiny_qwen(tmp_path / "again", seed=0, warm_start_steps=WARM_START_STEPS)
    assert _sha(again / "model.safetensors") == _sha(warm_dir / "model.safetensors")
    info = json.loads((warm_dir / "vppo_tiny.json").read_text())
    assert info["warm_start"]["steps"] == WARM_START_STEPS and info["warm_start"]["seed"] == 0
    assert info["warm_start"]["loss_last"] < info["warm_start"]["loss_first"] / 5


def test_plain_build_is_unchanged_and_torch_state_is_restored(tmp_path, tiny_model_dir, warm_dir):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    build_tiny_qwen(tmp_path / "short", seed=0, warm_start_steps=2)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)
    plain = build_tiny_qwen(tmp_path / "plain", seed=0)  # after warm builds in this process
    assert _sha(plain / "model.safetensors") == _sha(tiny_model_dir / "model.safetensors")
    assert "warm_start" not in json.loads((tiny_model_dir / "vppo_tiny.json").read_text())
    assert _sha(warm_dir / "model.safetensors") != _sha(tiny_model_dir / "model.safetensors")
    for name in ("tokenizer.json", "processor_config.json", "config.json"):
        assert _sha(warm_dir / name) == _sha(tiny_model_dir / name), name


def _sample_answers(policy, text: str, image, n: int = 32) -> list[str | None]:
    model, processor = policy
    prompt = encode_prompts(processor, [text], [[image]])
    torch.manual_seed(0)
    with torch.no_grad():
        sequences = model.generate(**prompt, max_new_tokens=SMOKE_MAX_NEW_TOKENS, num_return_sequences=n,
                                   do_sample=True, temperature=1.0, top_p=1.0, top_k=50)
    tok = processor.tokenizer
    ids, _ = split_generation(sequences, prompt["input_ids"].shape[1], [tok.convert_tokens_to_ids("<|im_end|>")],
                              tok.pad_token_id)
    return [extract_answer(r) for r in tok.batch_decode(ids, skip_special_tokens=True)]


def test_counting_prompt_gets_boxed_guesses_within_the_smoke_budget(warm_policy):
    row, image = synthetic_example(0, seed=0)  # the smoke run's first training question
    answers = _sample_answers(warm_policy, training_prompt(row["problem"]), image)
    assert sum(bool(a) for a in answers) >= 24, answers  # a non-empty \boxed{} in most samples
    assert sum(a in {"1", "2", "3", "4"} for a in answers) >= 16, answers  # mostly guesses of a count
    assert 2 <= len({a for a in answers if a}) and 0 < answers.count(row["answer"]) < len(answers), answers


def test_choice_prompt_gets_boxed_letters(warm_policy):
    question, answer, labels = _fixture_question("choice", random.Random("test-choice"))
    text, _ = parse_sharegpt_row(_sharegpt("q", "unused.png", question, answer))
    image = tiny_models.warm_start_prompt("choice", 0, seed=7)[1]  # any fixture-style picture
    answers = _sample_answers(warm_policy, text, image)
    assert sum(bool(a) for a in answers) >= 24, answers
    assert sum(a in set("ABCD") for a in answers) >= 16, answers
    assert len({a for a in answers if a}) >= 2, answers


def test_every_taught_response_fits_the_smoke_token_budget(warm_policy):
    _, processor = warm_policy
    for kind, answers in tiny_models.ANSWER_SETS.items():
        for word in tiny_models.THINK_WORDS[kind]:
            for answer in answers:
                response = tiny_models.format_response(word, answer)
                ids = processor.tokenizer(response, add_special_tokens=False)["input_ids"]
                assert len(ids) <= SMOKE_MAX_NEW_TOKENS and extract_answer(response) == answer, response


def test_cli_option(tmp_path):
    parser = argparse.ArgumentParser()
    tiny_models.configure(parser)
    assert tiny_models.run(parser.parse_args([str(tmp_path / "m"), "--warm-start-steps", "2"])) == 0
    assert json.loads((tmp_path / "m" / "vppo_tiny.json").read_text())["warm_start"]["steps"] == 2
