"""Per-step time by phase of ``dapo`` vs ``vppo`` on the same data and seed, in one run: the VPPO overhead.

Both methods train with the real trainer (vppo.training.trainer.VPPOTrainer, plain transformers generation)
on a random-init Qwen2.5-VL written to a temp dir, with the paper's layout of several optimizer updates per
rollout, so both run the old-log-prob pass (the paper's 7B recipe: 384 prompts per rollout, 128 per update).
Every other response is graded right, so every group has mixed rewards and each rollout is one generation round
(a random model answers nothing right; refill rounds would only time generation again); the cap of one round
makes any refill an error. Phases per rollout: generation (+ reward), old log-prob pass, masked-image pass (vppo:
masking the PIL images, re-encoding them, one forward pass), update (forward + backward of every micro-batch).
The first rollout of each method is a warm-up and is not counted.

Printed and written (--out JSON): seconds per rollout by phase for each method, and
  masked_over_old   = masked pass / old log-prob pass (target: <= 1, "no more than one old-log-prob pass")
  overhead_phases   = vppo masked pass / (vppo step - masked pass)  (the extra work, with identical rollouts)
  overhead_wall     = vppo step / dapo step - 1                      (wall clock; includes generation noise)

Sizes (--size): ``tiny`` (the test model: hidden 64, 2 layers, vocab 512, 16-token responses),
``wide`` (CPU-feasible: hidden 512, 4 layers, vocab 32768, 128-token responses), ``realistic`` (GPU:
Qwen2.5-VL-7B width: hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocab 151936, vision tower at full
width (1280, 16 heads) but few layers, paper pixel bounds (>= 256 vision tokens per image), 1024-token
responses, bf16). Any size field can be overridden (--layers, --response-length, ...).

    python bench/bench_train_step.py --size tiny
    python bench/bench_train_step.py --size wide
    python bench/bench_train_step.py --size realistic --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from vppo.fileio import write_json_atomic

SIZES = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=512, vision_hidden=32, vision_depth=2,
                 vision_heads=2, vision_mlp=64, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, response_length=16,
                 prompts=4, generations=4, micro=4, bf16=False),
    "wide": dict(hidden=512, layers=4, heads=8, kv_heads=4, mlp=1536, vocab=32768, vision_hidden=256,
                 vision_depth=2, vision_heads=4, vision_mlp=512, min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64,
                 response_length=128, prompts=4, generations=4, micro=4, bf16=False),
    "realistic": dict(hidden=3584, layers=4, heads=28, kv_heads=4, mlp=18944, vocab=151936, vision_hidden=1280,
                      vision_depth=4, vision_heads=16, vision_mlp=3420, min_pixels=256 * 28 * 28,
                      max_pixels=1280 * 28 * 28, response_length=1024, prompts=4, generations=8, micro=4, bf16=True),
}
PHASES = ("generation", "old_logp", "masked_pass", "update")


def write_model(out: Path, size: dict, seed: int) -> Path:
    """A random-init Qwen2.5-VL checkpoint with the tiny model's tokenizer and a processor with ``size``'s bounds."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vppo.data.tiny_models import build_config, build_generation_config, build_processor, build_tokenizer

    tokenizer = build_tokenizer(seed)
    config = build_config(
        tokenizer, size["hidden"], size["layers"], size["vision_depth"], num_heads=size["heads"],
        num_kv_heads=size["kv_heads"], intermediate_size=size["mlp"], vocab_size=max(size["vocab"], len(tokenizer)),
        vision_hidden=size["vision_hidden"], vision_mlp=size["vision_mlp"], vision_heads=size["vision_heads"],
        rope_theta=1e6, max_position_embeddings=32768, window_size=112)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16 if size["bf16"] else torch.float32)
    # A random model rarely samples <|im_end|>: responses run to the length limit, the realistic worst case.
    model.generation_config = build_generation_config(tokenizer)
    model.save_pretrained(out)
    build_processor(tokenizer, size["min_pixels"], size["max_pixels"]).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _alternating_grade():
    from itertools import count

    from vppo.reward import Grade

    calls = count()
    return lambda response, answer: Grade(accuracy=float(next(calls) % 2), format=0.0, extracted=None)


def run_method(method: str, model_dir: Path, data_dir: Path, work: Path, size: dict, rollouts: int,
               updates_per_rollout: int, device: str, seed: int) -> list[dict]:
    """Phase seconds of each rollout (warm-up included; the caller drops it)."""
    from vppo.training.recipes import load_recipe
    from vppo.training.rewards import GradingReward
    from vppo.training.runner import TrainRequest, build_trainer, cpu_threads

    overrides = dict(rollout_batch_prompts=size["prompts"], num_generations=size["generations"],
                     update_batch_prompts=size["prompts"] // updates_per_rollout, micro_batch_responses=size["micro"],
                     tas_group_responses=size["micro"],
                     max_completion_length=size["response_length"], max_steps=rollouts * updates_per_rollout,
                     save_steps=10**6 * updates_per_rollout, dynamic_sampling_max_rounds=1, bf16=size["bf16"],
                     gradient_checkpointing=device == "cuda", gpus_per_node=1 if device == "cuda" else 0,
                     min_pixels=size["min_pixels"], max_pixels=size["max_pixels"])
    recipe = load_recipe("smoke", overrides)
    request = TrainRequest(model=model_dir, data=data_dir, recipe="smoke", method=method, work_dir=work,
                           out=work / "unused", seed=seed, overrides=overrides)
    with cpu_threads(recipe):
        # every other response graded right: each group has mixed rewards, so each rollout is one generation round
        trainer = build_trainer(request, recipe, reward=GradingReward(_alternating_grade())).trainer
        trainer.train()
    steps = [entry for entry in trainer.state.log_history if "time_update_s" in entry]
    per_rollout = []
    for r in range(rollouts):
        chunk = steps[r * updates_per_rollout:(r + 1) * updates_per_rollout]
        per_rollout.append({phase: sum(e.get(f"time_{phase}_s", 0.0) for e in chunk) for phase in PHASES})
    return per_rollout


def summarise(per_rollout: list[dict]) -> dict:
    measured = per_rollout[1:] or per_rollout
    out = {phase: statistics.median(r[phase] for r in measured) for phase in PHASES}
    out["step"] = sum(out[phase] for phase in PHASES)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts per method (the first is a warm-up)")
    parser.add_argument("--updates-per-rollout", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    for key in ("layers", "response_length", "prompts", "generations", "micro"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    size = dict(SIZES[args.size])
    size.update({k: getattr(args, k) for k in ("layers", "response_length", "prompts", "generations", "micro")
                 if getattr(args, k) is not None})

    import transformers
    import trl

    from vppo.data.train_data import prepare_train_data

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        model_dir = write_model(tmp / "model", size, args.seed)
        data_dir = prepare_train_data("synthetic", tmp / "data", n_rows=max(64, 4 * size["prompts"]), seed=args.seed)
        results = {}
        for method in ("dapo", "vppo"):
            rollouts = run_method(method, model_dir, data_dir, tmp / method, size, args.rollouts,
                                  args.updates_per_rollout, device, args.seed)
            results[method] = {"per_rollout": rollouts, "median": summarise(rollouts)}
    dapo, vppo = results["dapo"]["median"], results["vppo"]["median"]
    report = {
        "size": args.size, "sizes": size, "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "rollouts_measured": max(args.rollouts - 1, 1), "updates_per_rollout": args.updates_per_rollout,
        "responses_per_rollout": size["prompts"] * size["generations"], "seconds_per_rollout": results,
        "masked_over_old": vppo["masked_pass"] / vppo["old_logp"],  # vppo always runs the old log-prob pass
        "overhead_phases": vppo["masked_pass"] / (vppo["step"] - vppo["masked_pass"]),
        "overhead_wall": vppo["step"] / dapo["step"] - 1.0,
    }
    print(f"device {report['device_name']} ({device}), size {args.size}: {report['responses_per_rollout']} responses x "
          f"{size['response_length']} tokens per rollout, {args.updates_per_rollout} updates per rollout")
    print(f"{'method':<6}" + "".join(f"{p:>14}" for p in (*PHASES, "step")) + "   (median s per rollout)")
    for method, figures in (("dapo", dapo), ("vppo", vppo)):
        print(f"{method:<6}" + "".join(f"{figures[p]:>14.3f}" for p in (*PHASES, "step")))
    print(f"masked pass / old log-prob pass = {report['masked_over_old']:.2f}   "
          f"VPPO overhead: {100 * report['overhead_phases']:.1f}% by phases, {100 * report['overhead_wall']:+.1f}% wall")
    if args.out:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
