"""Model adapters: repeats folded into one n=k job and fanned back out; the vLLM adapter's requests (one
SamplingParams(n=k) per question, every protocol value explicit) checked with a fake engine. Real vLLM is
not installable here: these tests are what verifies the adapter on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lmms_eval.api.instance import Instance
from PIL import Image

from vppo.evaluation import tasklib
from vppo.evaluation.protocol import PROTOCOL_SAMPLING
from vppo.evaluation.requests import build_job, fan_out, group_repeats, sampling_from_gen_kwargs, truncate_at_stop
from vppo.evaluation.vllm_adapter import VPPOVLLMModel, auto_tensor_parallel_size, request_seed

GEN_KWARGS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "max_new_tokens": 2048, "repetition_penalty": 1.0,
              "do_sample": True, "until": []}


def _docs(tmp_path, n):
    docs = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40 + i, 30), (i, 0, 0)).save(path)
        docs.append({"row_id": f"q{i}", "prompt": f"<image>Question {i}?", "answer": str(i), "image_paths": [str(path)]})
    return docs


def _requests(docs, k):
    """What lmms-eval's evaluator passes a chat model: each Instance object k times in a row."""
    out = []
    for i in range(len(docs)):
        inst = Instance("generate_until", ("ctx", tasklib.doc_to_messages, dict(GEN_KWARGS), i, "vppo_t", "test"), 0,
                        metadata={"task": "vppo_t", "doc_id": i, "repeats": k})
        out += [inst] * k
    return out


def test_group_repeats_and_fan_out_round_trip():
    a, b = object(), object()
    groups = group_repeats([a, a, a, b, b, a])
    assert groups == [(a, 3), (b, 2), (a, 1)]
    assert fan_out(groups, [["a1", "a2", "a3"], ["b1", "b2"], ["a4"]]) == ["a1", "a2", "a3", "b1", "b2", "a4"]
    with pytest.raises(RuntimeError, match="asked for 2"):
        fan_out(groups, [["a1", "a2", "a3"], ["b1"], ["a4"]])


def test_sampling_comes_from_the_task_and_greedy_is_refused():
    s = sampling_from_gen_kwargs(GEN_KWARGS, 8, default_max_new_tokens=4096)
    assert s == PROTOCOL_SAMPLING  # the task's 2048 wins over the model's 4096 (not max(task, model))
    with pytest.raises(ValueError, match="greedy"):
        sampling_from_gen_kwargs({"do_sample": False}, 8, 16)
    assert truncate_at_stop("abc\n\nxyz", ["\n\n"]) == "abc" and truncate_at_stop("abc", []) == "abc"


def test_build_job_accepts_chat_and_simple_requests(tmp_path):
    docs = _docs(tmp_path, 1)
    task_dict = {"vppo_t": {"test": docs}}
    chat = build_job(_requests(docs, 1)[0], task_dict, 8, 16)
    simple = build_job(Instance("generate_until", (docs[0]["prompt"], dict(GEN_KWARGS), tasklib.doc_to_visual, 0,
                                                   "vppo_t", "test"), 0,
                                metadata={"task": "vppo_t", "doc_id": 0, "repeats": 8}), task_dict, 8, 16)
    assert chat.text == simple.text == "<image>Question 0?"
    assert len(chat.images) == len(simple.images) == 1 and chat.sampling.n == 8 and chat.key == ("vppo_t", "test", 0)


class FakeEngine:
    """Stands in for vllm.LLM: records what it was asked, answers n completions per prompt."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        return [SimpleNamespace(prompt_token_ids=[0] * 5, outputs=[
            SimpleNamespace(text=f"{p['prompt'][-12:]}|{j}", token_ids=[1] * (j + 1)) for j in range(sp["n"])])
            for p, sp in zip(prompts, params)]


def test_vllm_adapter_sends_one_n_k_request_per_question(tiny_model_dir, tmp_path):
    docs = _docs(tmp_path, 3)
    engine = FakeEngine()
    model = VPPOVLLMModel(str(tiny_model_dir), engine=engine, sampling_params_cls=dict, seed=7, batch_size=2)
    model.task_dict = {"vppo_t": {"test": docs}}
    results = model.generate_until(_requests(docs, 8))
    assert len(engine.calls) == 2  # 3 questions, 2 per engine call
    prompts = [p for call in engine.calls for p in call[0]]
    params = [sp for call in engine.calls for sp in call[1]]
    assert len(prompts) == 3 and all(len(p["multi_modal_data"]["image"]) == 1 for p in prompts)
    assert all(p["prompt"].count("<|image_pad|>") == 1 and p["prompt"].endswith("<|im_start|>assistant\n")
               for p in prompts)
    assert "You are a helpful assistant." in prompts[0]["prompt"]
    assert params[0] == {"n": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0,
                         "max_tokens": 2048, "seed": request_seed(7, ("vppo_t", "test", 0)),
                         "skip_special_tokens": True}
    assert len({sp["seed"] for sp in params}) == 3
    # 24 results, question by question, each question's 8 samples in order.
    assert len(results) == 24
    assert [r.text.rsplit("|", 1)[1] for r in results[:8]] == [str(j) for j in range(8)]
    assert results[8].text.startswith(prompts[1]["prompt"][-12:])
    assert results[3].token_counts.output_tokens == 4 and results[3].token_counts.input_tokens == 5


def test_vllm_adapter_detects_a_short_answer(tiny_model_dir, tmp_path):
    class ShortEngine(FakeEngine):
        def generate(self, prompts, params, use_tqdm=False):
            return super().generate(prompts, [{**sp, "n": sp["n"] - 1} for sp in params])

    docs = _docs(tmp_path, 1)
    model = VPPOVLLMModel(str(tiny_model_dir), engine=ShortEngine(), sampling_params_cls=dict)
    model.task_dict = {"vppo_t": {"test": docs}}
    with pytest.raises(RuntimeError, match="7 samples"):
        model.generate_until(_requests(docs, 8))


def _fake_checkpoint(path, weight_gib, heads):
    path.mkdir()
    (path / "config.json").write_text(f'{{"text_config": {{"num_attention_heads": {heads}}}}}')
    with open(path / "model.safetensors", "wb") as f:
        f.truncate(int(weight_gib * 1024**3))  # sparse: no disk used
    return path


@pytest.mark.parametrize("gib,heads,gpus,expected", [(16.6, 28, 8, 1), (67, 40, 8, 4), (67, 40, 2, 2),
                                                     (67, 14, 8, 2), (140, 64, 8, 8)])
def test_tensor_parallel_size_from_model_size(tmp_path, gib, heads, gpus, expected):
    assert auto_tensor_parallel_size(_fake_checkpoint(tmp_path / "ckpt", gib, heads), gpus) == expected


def test_hf_adapter_draws_k_samples_per_question(tiny_model_dir, tmp_path, capsys):
    from vppo.evaluation.lmms_adapter import VPPOHFModel

    docs = _docs(tmp_path, 3)
    model = VPPOHFModel(str(tiny_model_dir), batch_size=2, max_new_tokens=4, device="cpu")
    model.task_dict = {"vppo_t": {"test": docs}}
    requests = _requests(docs, 4)
    for r in requests:
        r.arguments[2]["max_new_tokens"] = 4
    first = model.generate_until(requests)
    assert len(first) == 12 and all(0 < r.token_counts.output_tokens <= 4 for r in first)
    assert "vppo_hf generate: 100%" in capsys.readouterr().err  # a progress bar over the questions
    assert [r.text for r in model.generate_until(requests)] == [r.text for r in first]  # seeded per call
    model.clean()  # lmms-eval calls this after every evaluation: the model must survive it
    assert model.model is not None


def test_entry_point_payload_is_what_lmms_eval_loads():
    """pyproject's lmms_eval.models entry point, loaded the way lmms-eval loads it (without reinstalling)."""
    import importlib
    import tomllib
    from pathlib import Path

    from lmms_eval.models import MODEL_REGISTRY_V2, get_model
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (target,) = project["project"]["entry-points"]["lmms_eval.models"].values()
    module, _, attr = target.partition(":")
    payload = getattr(importlib.import_module(module), attr)
    registry = ModelRegistryV2()
    for manifest in registry._coerce_payload_to_manifests(payload):
        registry.register_manifest(manifest)
    assert {"vppo_hf", "vppo_vllm"} <= set(registry.list_model_names())

    from vppo.evaluation.registry import register

    register()
    assert get_model("vppo_hf").__name__ == "VPPOHFModel" and get_model("vppo_vllm").__name__ == "VPPOVLLMModel"
    assert MODEL_REGISTRY_V2.resolve("vppo_vllm").model_type == "chat"


#: Names under which a sampling value can appear as a default in the evaluation code.
SAMPLING_NAMES = {"samples", "n", "k", "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty"}


def _literal_sampling_defaults(path):
    """(line, name, value) for every number written as a default of a sampling-named parameter, field or
    ``--option`` in ``path`` (function defaults, dataclass fields, argparse ``default=``, ``dict.get`` fallbacks)."""
    import ast

    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs += list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            pairs = [(a.arg, d) for a, d in pairs]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            pairs.append((node.target.id, node.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args:
            flag = node.args[0].value if isinstance(node.args[0], ast.Constant) else ""
            name = str(flag).lstrip("-").replace("-", "_")
            pairs += [(name, kw.value) for kw in node.keywords if kw.arg == "default"]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and len(node.args) == 2:
            key = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            pairs.append((str(key), node.args[1]))
        found += [(value.lineno, name, value.value) for name, value in pairs
                  if name in SAMPLING_NAMES and isinstance(value, ast.Constant)
                  and isinstance(value.value, (int, float)) and not isinstance(value.value, bool)]
    return found


def test_sampling_values_are_written_once_in_the_protocol():
    """Every default sampling value of the evaluation code is read from PROTOCOL_SAMPLING, never re-typed."""
    from pathlib import Path

    import vppo.evaluation as evaluation

    package = Path(evaluation.__file__).parent
    retyped = {f"{p.name}:{line}: {name}={value}" for p in sorted(package.glob("*.py")) if p.name != "protocol.py"
               for line, name, value in _literal_sampling_defaults(p)}
    assert retyped == set()


def test_sampling_defaults_follow_the_protocol():
    import argparse
    import dataclasses
    import inspect

    from vppo.evaluation.cli import add_eval_options
    from vppo.evaluation.lmms_adapter import VPPOHFModel
    from vppo.evaluation.protocol import Sampling
    from vppo.evaluation.results import RESULT_JSON_SCHEMA
    from vppo.evaluation.runner import EvalRequest

    parser = argparse.ArgumentParser()
    add_eval_options(parser)
    args = parser.parse_args([])
    assert (args.samples, args.max_new_tokens) == (PROTOCOL_SAMPLING.n, PROTOCOL_SAMPLING.max_new_tokens)
    assert EvalRequest(checkpoint=None, data=None, benchmarks=[], out=None).sampling == PROTOCOL_SAMPLING
    for model in (VPPOHFModel, VPPOVLLMModel):
        assert inspect.signature(model).parameters["max_new_tokens"].default == PROTOCOL_SAMPLING.max_new_tokens
    assert sampling_from_gen_kwargs({}, PROTOCOL_SAMPLING.n, PROTOCOL_SAMPLING.max_new_tokens) == PROTOCOL_SAMPLING
    required = RESULT_JSON_SCHEMA["properties"]["sampling"]["required"]
    assert required == [f.name for f in dataclasses.fields(Sampling)]
