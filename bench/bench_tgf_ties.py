"""How often TGF's top-40 % cut falls inside a tie of token dependencies, so that the sort's tie order decides
which tokens carry gradient (ours: stable, the earlier position wins; the official code: ``torch.sort`` without
``stable``, whose order among equal keys is the device kernel's).

Rollouts as the trainer samples them (training prompt, temperature 1.0, no top-p/top-k cut, the recipe's
completion length) on training questions of the mini task, the k3 dependency against the official masking
(random 14 px patches, p = 0.5). Reported: the share of valid tokens whose dependency is exactly 0, the share of
responses whose cut falls inside a tie (the k-th and (k+1)-th largest values equal), and the share of valid
tokens whose kept/dropped decision depends on the tie order (the tied tokens at the cut value), and how many of
those the policy samples with probability 1 (no policy gradient either way: the order cannot matter for them).

    python bench/bench_tgf_ties.py --model MINI_MODEL_DIR [--prompts 32] [--out bench/results/tgf_ties.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vppo import harness_commit
from vppo.algorithm import keep_counts, token_vision_dependency
from vppo.data import mini_task
from vppo.data.train_data import training_prompt
from vppo.masking import mask_image
from vppo.modeling import load_policy, load_processor, masked_pixel_values
from vppo.rollout import encode_prompts, join_prompt_and_response, repeat_prompt_batch, response_logprobs, \
    split_generation


def rollout_dependencies(model, processor, example: dict, samples: int, max_new_tokens: int,
                         rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(k3 dependency, log-prob of the sampled token) of every valid token of ``samples`` responses to one
    training question."""
    image = example["image"]
    prompt = encode_prompts(processor, [training_prompt(example["problem"])], [[image]])
    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        sequences = model.generate(**prompt, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                   max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                   pad_token_id=tok.pad_token_id)
        ids, mask = split_generation(sequences, prompt["input_ids"].shape[1], eos, tok.pad_token_id)
        real = join_prompt_and_response(repeat_prompt_batch(prompt, samples), ids, mask)
        masked = {**prompt, "pixel_values": masked_pixel_values(
            processor.image_processor, [[mask_image(image, "patch", rng=rng)]], prompt["image_grid_thw"])}
        blind = join_prompt_and_response(repeat_prompt_batch(masked, samples), ids, mask)
        logp = response_logprobs(model, real)
        dep = token_vision_dependency(logp, response_logprobs(model, blind), mask)
    return [(dep[i][mask[i].bool()].numpy(), logp[i][mask[i].bool()].numpy()) for i in range(samples)]


def tie_counts(dependency: np.ndarray, logp: np.ndarray, keep_ratio: float) -> dict:
    """Zeros, whether the cut falls in a tie, how many tokens that tie holds (0 when it does not) and how many
    of those the policy samples with probability 1 in float32 (log-prob exactly 0: their policy gradient is
    zero whether they are kept or not)."""
    n = len(dependency)
    k = int(keep_counts(torch.tensor([n]), keep_ratio)[0])
    ordered = np.sort(dependency)[::-1]
    tied = np.zeros(n, dtype=bool)
    if 0 < k < n and ordered[k - 1] == ordered[k]:
        tied = dependency == ordered[k - 1]
    return {"n": n, "zeros": int((dependency == 0).sum()), "cut_in_tie": bool(tied.any()),
            "tied_at_cut": int(tied.sum()), "tied_at_cut_certain": int((tied & (logp == 0)).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--model-label", default="mini warm start (vppo fetch-model mini, seed 0)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the mini recipe's max_completion_length")
    parser.add_argument("--keep-ratio", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tgf_ties.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = load_policy(str(args.model), dtype="float32", device=torch.device("cpu")).eval()
    processor = load_processor(str(args.model))
    start = time.time()
    rows = []
    for index in range(args.prompts):
        example = mini_task.mini_example("train", index, mini_task.KINDS)
        for dep, logp in rollout_dependencies(model, processor, example, args.samples, args.max_new_tokens, rng):
            rows.append({"kind": example["kind"], **tie_counts(dep, logp, args.keep_ratio)})
    valid = sum(r["n"] for r in rows)
    summary = {
        "model": args.model_label, "command": " ".join(["python", *sys.argv]), "harness_commit": harness_commit(),
        "prompts": args.prompts, "samples": args.samples, "responses": len(rows),
        "valid_tokens": valid, "keep_ratio": args.keep_ratio, "seed": args.seed, "dtype": "float32",
        "estimator": "k3", "masking": "patch", "max_new_tokens": args.max_new_tokens,
        "zero_dependency_token_share": sum(r["zeros"] for r in rows) / valid,
        "responses_with_cut_in_tie_share": sum(r["cut_in_tie"] for r in rows) / len(rows),
        "tokens_decided_by_tie_order_share": sum(r["tied_at_cut"] for r in rows) / valid,
        "of_those_sampled_with_probability_1_share": (sum(r["tied_at_cut_certain"] for r in rows)
                                                      / max(sum(r["tied_at_cut"] for r in rows), 1)),
        "torch": torch.__version__, "wall_s": round(time.time() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
