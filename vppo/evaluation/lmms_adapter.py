"""``vppo_hf``: an lmms-eval chat model that samples with plain transformers (CPU machines, single GPUs).

Registered through lmms-eval's ``lmms_eval.models`` entry point (:mod:`vppo.evaluation.registry`). The k
repeats of a question are drawn in one ``generate`` call with ``num_return_sequences=k``, several questions
per call (``batch_size`` prompts, each k times). Every sampling parameter comes from the task (the checkpoint's
own generation config, e.g. Qwen2.5-VL-Instruct's repetition_penalty 1.05 and top_k 1, never leaks in), and the
image processor runs with the protocol's pixel bounds whatever the checkpoint's processor config says.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from vppo.eval_images import PixelBounds
from vppo.evaluation.protocol import PROTOCOL_SAMPLING
from vppo.evaluation.requests import GenerationJob, build_job, fan_out, group_repeats, truncate_at_stop
from vppo.model_families import family_of_dir
from vppo.modeling import load_policy, load_processor
from vppo.progress import progress
from vppo.rollout import encode_prompts, split_generation


class VPPOHFModel(lmms):
    is_simple = False

    def __init__(self, pretrained: str, batch_size: int | str = 8,
                 max_new_tokens: int = PROTOCOL_SAMPLING.max_new_tokens,
                 device: str | None = None,
                 dtype: str = "auto", seed: int = 0, **kwargs: Any) -> None:
        super().__init__()
        unknown = {k: v for k, v in kwargs.items() if k not in ("max_batch_size",)}
        if unknown:
            raise TypeError(f"vppo_hf: unknown model argument(s) {sorted(unknown)}")
        self.pretrained = str(pretrained)
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        #: the checkpoint's model family: its processor bounds are the protocol's (vppo.model_families)
        self.model_family = family_of_dir(self.pretrained)
        protocol = self.model_family.processor_bounds
        self.processor = load_processor(self.pretrained, protocol.min_pixels, protocol.max_pixels)
        size = self.processor.image_processor.size
        #: the bounds the processor really holds (recorded in every result, checked against the protocol)
        self.image_bounds = PixelBounds(int(size["shortest_edge"]), int(size["longest_edge"]))
        self._model = load_policy(self.pretrained, dtype=dtype, device=self._device).eval()
        tok = self.processor.tokenizer
        eos = self._model.generation_config.eos_token_id
        self.eos_ids = [tok.convert_tokens_to_ids("<|im_end|>")] if eos is None else list(eos if isinstance(eos, list) else [eos])
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    def clean(self):
        """lmms-eval calls this after each evaluation and it deletes nn.Module attributes: keep the model so
        the runner can evaluate benchmark after benchmark with one load."""

    # ------------------------------------------------------------------------------------------ generation
    def generate_until(self, requests) -> list[GenerationResult]:
        groups = group_repeats(requests)
        jobs = [build_job(req, self.task_dict, n, self.default_max_new_tokens) for req, n in groups]
        torch.manual_seed(self.seed)  # each evaluate() call reproducible on its own
        outputs: list[list[GenerationResult] | None] = [None] * len(jobs)
        # Batch jobs that share sampling parameters (same n, same max tokens); keep the original order.
        order = sorted(range(len(jobs)), key=lambda i: _sampling_key(jobs[i]))
        with progress(desc="vppo_hf generate", total=len(jobs), unit="question") as bar:
            for _, same in itertools.groupby(order, key=lambda i: _sampling_key(jobs[i])):
                same = list(same)
                for start in range(0, len(same), self.batch_size_per_gpu):
                    chunk = same[start:start + self.batch_size_per_gpu]
                    for i, result in zip(chunk, self._generate([jobs[i] for i in chunk])):
                        outputs[i] = result
                    bar.update(len(chunk))
        return fan_out(groups, outputs)

    @torch.no_grad()
    def _generate(self, jobs: list[GenerationJob]) -> list[list[GenerationResult]]:
        s = jobs[0].sampling
        inputs = encode_prompts(self.processor, [j.text for j in jobs], [j.images for j in jobs])
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        prompt_len = inputs["input_ids"].shape[1]
        sequences = self._model.generate(
            **inputs, do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
            repetition_penalty=s.repetition_penalty, max_new_tokens=s.max_new_tokens, num_return_sequences=s.n,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        response, mask = split_generation(sequences.cpu(), prompt_len, self.eos_ids, self.pad_id)
        texts = self.processor.tokenizer.batch_decode(response, skip_special_tokens=True)
        lengths = mask.sum(1).tolist()
        prompt_tokens = inputs["attention_mask"].sum(1).tolist()
        results = []
        for j, job in enumerate(jobs):  # generate returns each prompt's n samples contiguously
            rows = range(j * s.n, (j + 1) * s.n)
            results.append([GenerationResult(truncate_at_stop(texts[r], job.stop),
                                             TokenCounts(input_tokens=int(prompt_tokens[j]), output_tokens=int(lengths[r])))
                            for r in rows])
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError("vppo_hf generates only (the avg@k protocol scores sampled answers)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vppo_hf answers single-turn questions only")


def _sampling_key(job: GenerationJob) -> tuple:
    s = job.sampling
    return (s.n, s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.repetition_penalty)
