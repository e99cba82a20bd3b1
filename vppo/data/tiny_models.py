"""Build a tiny, random-init Qwen2.5-VL (or Qwen3-VL) checkpoint offline (real architecture, real processor, ChatML).

The directory it writes loads with :func:`vppo.modeling.load_policy` / :func:`vppo.modeling.load_processor`
and with ``AutoModelForImageTextToText``; every stage of the harness (training, conversion, evaluation,
the Snakemake DAG) runs on it on a CPU in seconds. Everything is derived from ``seed``: two builds with the
same seed are byte-identical in weights and tokenizer.

A random-init model never writes a ``\\boxed{}`` answer, so every reward is 0. ``warm_start_steps > 0`` adds a
short supervised fit after the random init (``vppo fetch-model tiny-warm``): on ChatML conversations shaped
like the harness's prompts (synthetic counting questions with the reasoning instruction, fixture-style
evaluation questions) the model learns to answer ``<think> word </think> \\boxed{X}`` with X drawn at random
from the answers plausible for the question's kind. It is not taught to be right: sampled at temperature
1.0 its accuracy is about chance, so groups of samples get mixed rewards and the whole RL path runs on
non-zero advantages.

Every model family of :mod:`vppo.model_families` has a tiny build: ``family="qwen3-vl"`` takes its config from
:mod:`vppo.data.tiny_architectures`; tokenizer, chat template, warm start and tiny token budget are shared.

CLI: ``vppo make-tiny-model OUT_DIR [--seed 0] [--warm-start-steps N] [--family qwen3-vl]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vppo.data.tiny_architectures import CONFIG_BUILDERS, SPECIAL_TOKENS
from vppo.data.tiny_architectures import build_qwen25vl_config as build_config  # noqa: F401 (the bench)
from vppo.model_families import FAMILIES, QWEN2_5_VL, ModelFamily
from vppo.modeling import ImageOnlyQwen2_5_VLProcessor, image_only_processor

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2.5-VL's ChatML: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|> in place.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

#: Image bounds of the tiny processor, in merged vision tokens: at most 16 per image keeps CPU runs fast.
TINY_MIN_TOKENS, TINY_MAX_TOKENS = 4, 16
TINY_MIN_PIXELS = QWEN2_5_VL.resize_factor ** 2 * TINY_MIN_TOKENS
TINY_MAX_PIXELS = QWEN2_5_VL.resize_factor ** 2 * TINY_MAX_TOKENS


def _training_corpus(seed: int, n_lines: int = 3000) -> list[str]:
    """Generated text covering what the harness feeds the model: questions, reasoning, boxed answers."""
    rng = random.Random(seed)
    words = (
        "how many red blue green squares circles triangles are in the image what is the area angle length "
        "of side find value choose correct option answer question solve given figure shown below total "
        "count sum product ratio degrees units think reasoning process internal monologue enclosed within "
        "tags then provide your final boxed therefore so the is of a an and or"
    ).split()
    lines = []
    for _ in range(n_lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        number = rng.choice([str(rng.randint(0, 999)), f"{rng.randint(1, 9)}/{rng.randint(2, 9)}",
                             f"{rng.randint(0, 99)}.{rng.randint(0, 9)}", rng.choice("ABCDE")])
        lines.append(f"<think> {sentence} </think> \\boxed{{{number}}} ({rng.choice('ABCDE')}) = + - * ^ \\frac{{1}}{{2}}")
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 512, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on generated text (``corpus`` replaces it), carrying Qwen's special
    tokens and ChatML."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _training_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=32768,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_generation_config(tokenizer) -> GenerationConfig:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # A random-init model samples special tokens; a sampled <|image_pad|> breaks the next forward pass.
    suppressed = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != "<|im_end|>"]
    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        eos_token_id=[im_end],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        suppress_tokens=suppressed,
    )


def build_processor(tokenizer, min_pixels: int | None = None, max_pixels: int | None = None,
                    family: ModelFamily = QWEN2_5_VL) -> ImageOnlyQwen2_5_VLProcessor:
    """The family's image-only processor; pixel bounds default to the tiny token budget at its resize factor."""
    area = family.resize_factor ** 2
    normalisation = {} if family is QWEN2_5_VL else {"image_mean": list(family.image_mean),
                                                     "image_std": list(family.image_std)}
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels or area * TINY_MIN_TOKENS, "longest_edge": max_pixels or area * TINY_MAX_TOKENS},
        patch_size=family.patch_size, temporal_patch_size=family.temporal_patch_size, merge_size=family.merge_size,
        **normalisation,
    )
    return image_only_processor(family, image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def family_builders(family: ModelFamily):
    """(config builder, model class) of a family's tiny build; both take the same width keywords."""
    return CONFIG_BUILDERS[family.key]


#: Widths of the tiny builds. ``tiny``: the CPU test model (head_dim 16, the fastest). ``vllm``: the narrowest
#: shape vLLM's CPU attention accepts (head_dim 64; it refuses 16), same layers, vision tower and tokenizer.
TINY_SHAPES = {"tiny": {"hidden_size": 64, "num_heads": 4}, "vllm": {"hidden_size": 128, "num_heads": 2}}


def build_tiny_qwen(out_dir: str | Path, seed: int = 0, hidden_size: int | None = None, num_layers: int = 2,
                    warm_start_steps: int = 0, shape: str = "tiny", family: str = QWEN2_5_VL.key) -> Path:
    """Write a complete tiny checkpoint of ``family`` (weights, config, tokenizer, processor) to ``out_dir``.

    ``shape`` picks the width from :data:`TINY_SHAPES` (``hidden_size`` overrides it); ``warm_start_steps > 0``
    fits the random-init model to the answer format first (:func:`warm_start`). The ``vllm`` shape also gets
    the processor files a real Qwen2.5-VL checkpoint ships (:func:`write_hub_processor_files`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = dict(TINY_SHAPES[shape])
    hidden_size = width.pop("hidden_size") if hidden_size is None else hidden_size
    width.pop("hidden_size", None)
    model_family = FAMILIES[family]
    config_builder, model_class = family_builders(model_family)
    tokenizer = build_tokenizer(seed)
    config = config_builder(tokenizer, hidden_size=hidden_size, num_layers=num_layers, **width)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = build_generation_config(tokenizer)
    processor = build_processor(tokenizer, family=model_family)
    info = {"builder": "vppo.data.tiny_models", "seed": seed, "hidden_size": hidden_size, "num_layers": num_layers}
    if shape != "tiny":
        info["shape"] = shape
    if model_family is not QWEN2_5_VL:
        info["family"] = model_family.key
    if warm_start_steps > 0:
        info["warm_start"] = warm_start(model, processor, seed=seed, steps=warm_start_steps)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if shape == "vllm":
        write_hub_processor_files(out_dir, processor, model_family)
    (out_dir / "vppo_tiny.json").write_text(json.dumps(info) + "\n")
    return out_dir


def write_hub_processor_files(out_dir: Path, processor, family: ModelFamily = QWEN2_5_VL) -> None:
    """The processor files of a hub Qwen2.5-VL checkpoint, in their layout, beside transformers 5's own.

    A hub checkpoint has a flat ``preprocessor_config.json`` (``min_pixels``/``max_pixels``), a
    ``chat_template.json`` and, in current revisions, a ``video_preprocessor_config.json``; vLLM builds its
    Qwen2.5-VL processor (images AND videos) from these and fails without the video half. Values are the tiny
    processor's; the video bounds are the image bounds (videos are never fed).
    """
    ip = processor.image_processor
    common = {"patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size, "merge_size": ip.merge_size,
              "image_mean": list(ip.image_mean), "image_std": list(ip.image_std), "do_convert_rgb": True,
              "do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": ip.rescale_factor,
              "resample": int(ip.resample), "processor_class": family.processor_class}
    bounds = {"min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"],
              "size": {"shortest_edge": ip.size["shortest_edge"], "longest_edge": ip.size["longest_edge"]}}
    files = {
        "preprocessor_config.json": {**common, **bounds, "image_processor_type": "Qwen2VLImageProcessor"},
        "video_preprocessor_config.json": {**common, **bounds, "video_processor_type": family.video_processor_class,
                                           "do_sample_frames": False, "fps": 2.0},
        "chat_template.json": {"chat_template": processor.chat_template},
    }
    for name, data in files.items():
        (out_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ warm start: the answer format, not the answers

#: ``vppo fetch-model tiny-warm``: fit steps, AdamW learning rate, conversations per step.
WARM_START_STEPS = 80
WARM_START_LR = 5e-3
WARM_START_BATCH = 8
#: Prompt kinds of one batch (cycled for larger batches): the training set's counting questions and the three
#: fixture answer kinds, choices weighted as the benchmarks (4 of 8 are multiple choice).
WARM_START_KINDS = ("count",) * 3 + ("choice",) * 3 + ("number", "expression")
#: One-token words of the <think> block per kind: responses stay within the smoke run's 16 new tokens.
THINK_WORDS = {"count": ("count", "squares", "total"), "choice": ("option", "choose", "answer"),
               "number": ("area", "product", "value"), "expression": ("ratio", "so", "sum")}


#: The answers a question of each kind draws from: synthetic_example counts 1-4 squares, fixture choices are
#: A-D, fixture areas are products of two sides 2-9, fixture ratios \frac{p}{q-p} (p 1-5, q 6-9) are written
#: p/r, which mathruler grades equal and which is 3 tokens shorter.
ANSWER_SETS = {
    "count": tuple(str(n) for n in range(1, 5)),
    "choice": tuple("ABCD"),
    "number": tuple(str(n) for n in sorted({a * b for a in range(2, 10) for b in range(2, 10)})),
    "expression": tuple(f"{p}/{r}" for p in range(1, 6) for r in range(1, 9)),
}


def format_response(word: str, answer: str) -> str:
    """The assistant turn the warm start teaches: 15 tiny-tokenizer tokens at most, ``<|im_end|>`` included."""
    return f"<think> {word} </think> \\boxed{{{answer}}}<|im_end|>"


def warm_start_response(kind: str, rng: random.Random) -> str:
    """A response with a random think word and a random answer of the kind (the question is never looked at)."""
    return format_response(rng.choice(THINK_WORDS[kind]), rng.choice(ANSWER_SETS[kind]))


def warm_start_prompt(kind: str, index: int, seed: int):
    """(prompt text, PIL image) as the trainer (count) or the evaluation (fixture kinds) builds them."""
    from vppo.data.eval_data import parse_sharegpt_row
    from vppo.data.eval_fixtures import FIXTURE_SIZES, _draw_fixture_image, _fixture_question, _sharegpt
    from vppo.data.train_data import synthetic_example, training_prompt
    from vppo.eval_images import prepare_image

    if kind == "count":
        row, image = synthetic_example(index, seed)
        return training_prompt(row["problem"]), image
    rng = random.Random(f"warm-{seed}-{kind}-{index}")
    question, answer, labels = _fixture_question(kind, rng)
    image = _draw_fixture_image(labels, FIXTURE_SIZES[index % len(FIXTURE_SIZES)], rng)
    text, _ = parse_sharegpt_row(_sharegpt(f"warm-{index}", "unused.png", question, answer))
    return text, prepare_image(image)


@contextlib.contextmanager
def _deterministic_torch():
    """Deterministic kernels on one thread (reductions then do not depend on the machine's core count)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])


def _right_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    padded = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return padded, mask


def fit_responses(model, make_batch, steps: int, lr: float, seed: int) -> list[float]:
    """Fit ``model`` in place, step by step, on the mean response-token NLL of ``make_batch(step)`` (a
    :class:`vppo.rollout.ScoredBatch`): AdamW without weight decay, deterministic kernels on one thread.
    Returns the losses. Both warm starts (this module's and :mod:`vppo.data.mini_model`'s) run it."""
    from vppo.progress import progress
    from vppo.rollout import response_logprobs

    losses = []
    with _deterministic_torch():
        torch.manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        model.train()
        for step in progress(range(steps), desc="warm start", unit="step"):
            batch = make_batch(step)
            loss = -(response_logprobs(model, batch).sum() / batch.response_mask.sum())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
    return losses


def warm_start(model, processor, seed: int, steps: int = WARM_START_STEPS, lr: float = WARM_START_LR,
               batch_size: int = WARM_START_BATCH, n_prompt_batches: int = 4) -> dict:
    """Fit ``model`` in place on format-only conversations; returns the settings for ``vppo_tiny.json``.

    Prompts go through the real chat template and processor (``encode_prompts``: images, mrope
    ``mm_token_type_ids``) and the loss is the mean response-token NLL of ``response_logprobs``, the same
    forward path that generation and the trainer use. Prompt batches are encoded once; every step draws
    fresh answers, so the model learns the distribution of answers, not one answer per prompt.
    """
    from vppo.rollout import encode_prompts, join_prompt_and_response

    kinds = [WARM_START_KINDS[i % len(WARM_START_KINDS)] for i in range(batch_size)]
    data_seed = 1_000_003 + seed  # questions unlike the smoke run's data (seed 0) and fixtures
    batches = []
    for b in range(n_prompt_batches):
        prompts = [warm_start_prompt(kind, b * batch_size + i, data_seed) for i, kind in enumerate(kinds)]
        batches.append(encode_prompts(processor, [t for t, _ in prompts], [[im] for _, im in prompts]))
    rng = random.Random(f"warm-answers-{seed}")

    def make_batch(step: int):
        ids, mask = _right_padded(processor.tokenizer, [warm_start_response(k, rng) for k in kinds])
        return join_prompt_and_response(batches[step % n_prompt_batches], ids, mask)

    losses = fit_responses(model, make_batch, steps, lr, seed)
    return {"steps": steps, "lr": lr, "optimizer": "AdamW(weight_decay=0)", "batch_size": batch_size,
            "prompt_batches": n_prompt_batches, "kinds": sorted(set(kinds)), "seed": seed,
            "data_seed": data_seed, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=sorted(TINY_SHAPES), default="tiny",
                        help="width: tiny (head_dim 16, fastest) or vllm (head_dim 64, what vLLM's CPU build accepts)")
    parser.add_argument("--hidden-size", type=int, default=None, help="override the shape's width")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--family", choices=list(FAMILIES), default=QWEN2_5_VL.key, help="model family")
    parser.add_argument("--warm-start-steps", type=int, default=0,
                        help=f"fit the answer format after random init (0: none; {WARM_START_STEPS}: `fetch-model tiny-warm`)")


def run(args: argparse.Namespace) -> int:
    path = build_tiny_qwen(args.out_dir, seed=args.seed, hidden_size=args.hidden_size, num_layers=args.num_layers,
                           warm_start_steps=args.warm_start_steps, shape=args.shape, family=args.family)
    print(f"tiny {FAMILIES[args.family].label} written to {path}")
    return 0
