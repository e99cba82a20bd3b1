"""The paper's grader (:func:`vppo.reward.grade`) as a TRL reward function that also remembers its grades.

TRL calls reward functions with the decoded completions and every dataset column as keyword lists; the
reward is accuracy only (docs/protocol.md §4). Format never enters the reward but is reported, so each call's
:class:`~vppo.reward.Grade` list is kept until the trainer takes it with :meth:`GradingReward.take`
(dynamic sampling needs the per-row accuracy of each generation round).
"""

from __future__ import annotations

from typing import Callable

from vppo.reward import Grade, grade


def completion_text(completion) -> str:
    """The text of a TRL completion: a string, or a conversational list of messages (last one's content)."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class GradingReward:
    """``reward(prompts, completions, answer, **columns) -> [accuracy, ...]`` recording each call's grades.

    ``grader`` defaults to the mathruler path; tests pass a deterministic stand-in to steer accuracy.
    """

    __name__ = "accuracy"  # TRL names the reward metric after the function

    def __init__(self, grader: Callable[[str, str], Grade] = grade):
        self.grader = grader
        self._pending: list[Grade] = []

    def __call__(self, prompts, completions, answer, **_columns) -> list[float]:
        if len(answer) != len(completions):
            raise ValueError(f"reward: {len(completions)} completions but {len(answer)} answers")
        grades = [self.grader(completion_text(c), str(a)) for c, a in zip(completions, answer)]
        self._pending.extend(grades)
        return [g.accuracy for g in grades]

    def take(self) -> list[Grade]:
        """The grades recorded since the last call, in row order (and forget them)."""
        grades, self._pending = self._pending, []
        return grades
