"""The paper's grader, shared by the training reward and the evaluation metric.

Accuracy = 1 when the content of the LAST ``\\boxed{...}`` of the response grades equal to the label under
``mathruler.grader.grade_answer``, after whitespace around ``<``, ``>`` and ``/`` is removed from the
response (docs/protocol.md section 4). Format is reported separately and never enters the reward: it checks for
a ``<think>...</think>`` block followed by a boxed answer, as the official format reward does.
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass

from mathruler.grader import extract_boxed_content, grade_answer

_TAG_SPACING = re.compile(r"\s*(<|>|/)\s*")
_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
#: mathruler returns this string when the response holds no complete \boxed{...}.
NO_ANSWER = "None"
#: sympy inside grade_answer can hang on adversarial strings; a grade that takes longer counts as wrong.
GRADE_TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    """One graded response: ``extracted`` is the boxed content (``None`` if there was none)."""

    accuracy: float
    format: float
    extracted: str | None


def normalize_response(response: str) -> str:
    return _TAG_SPACING.sub(r"\1", response)


def extract_answer(response: str) -> str | None:
    """Content of the last complete ``\\boxed{}`` of ``response``, or ``None``."""
    content = extract_boxed_content(normalize_response(response))
    return None if content == NO_ANSWER else content


def _grade_with_timeout(given: str, truth: str) -> bool:
    # SIGALRM only works in the main thread of the main interpreter; elsewhere grade without a deadline.
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        return bool(grade_answer(given, truth))

    def _timeout(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(GRADE_TIMEOUT_S)
    try:
        return bool(grade_answer(given, truth))
    except TimeoutError:
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def grade(response: str, ground_truth: str) -> Grade:
    """Grade one response against its label; never raises on malformed model output."""
    normalized = normalize_response(response)
    extracted = extract_answer(response)
    correct = extracted is not None and _grade_with_timeout(extracted, str(ground_truth).strip())
    return Grade(
        accuracy=1.0 if correct else 0.0,
        format=1.0 if _FORMAT.fullmatch(normalized) else 0.0,
        extracted=extracted,
    )
