"""A scripted lmms-eval chat model for tests: known answers, so avg@k through lmms-eval can be checked by hand.

For the question with fixture row index r (the number at the end of its row id), the first
:func:`n_correct` (r) of its k responses box the right answer INSIDE a think block (so any stripping of
reasoning tags would turn them wrong) and the rest box a wrong one. Register it with
:func:`register_scripted` and run ``vppo eval --backend scripted``.
"""

from __future__ import annotations

from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms

from vppo.eval_images import PROCESSOR_BOUNDS
from vppo.evaluation.requests import group_repeats

BACKEND = "scripted"
MODEL_NAME = "vppo_scripted"


def n_correct(row_index: int, k: int = 8) -> int:
    """How many of a question's k responses are right: rows 0, 1, 2, ... get 3, 8, 4, 0, 5, ... (mod k+1)."""
    return (row_index * 5 + 3) % (k + 1)


class ScriptedModel(lmms):
    is_simple = False
    image_bounds = PROCESSOR_BOUNDS  # it reads no image, but declares the protocol's bounds like every backend

    def __init__(self, pretrained: str = "", **kwargs) -> None:
        super().__init__()

    def clean(self):
        pass

    def generate_until(self, requests) -> list[GenerationResult]:
        out = []
        for req, n in group_repeats(requests):
            _, _, _, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            right = n_correct(int(doc["row_id"].rsplit("-", 1)[-1]), n)
            out += [GenerationResult(f"<think>It is \\boxed{{{doc['answer']}}}</think>") if j < right
                    else GenerationResult("<think>hmm</think> \\boxed{not the answer}") for j in range(n)]
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


def register_scripted(monkeypatch) -> None:
    """Make ``--backend scripted`` resolve to :class:`ScriptedModel` for one test (pytest monkeypatch)."""
    from vppo.evaluation import registry

    monkeypatch.setitem(registry.MODELS, MODEL_NAME, f"{__name__}.ScriptedModel")
    monkeypatch.setitem(registry.BACKENDS, BACKEND, MODEL_NAME)
