"""The evaluation grader is the training reward's grader, and both are mathruler's grade_answer on the last
\\boxed{}: a table of tricky answer pairs, checked against hand expectations and against mathruler called
directly, and through the lmms-eval scoring hook."""

from __future__ import annotations

import pytest
from mathruler.grader import extract_boxed_content, grade_answer

from vppo.evaluation import tasklib
from vppo.reward import grade

# (response, label, correct?)
TRICKY = [
    (r"\boxed{\frac{1}{2}}", "1/2", 1),                          # fraction forms
    (r"\boxed{0.5}", r"\frac{1}{2}", 1),
    (r"\boxed{1 / 2}", "1/2", 1),                                 # spaces around '/' removed first
    (r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", 1),                 # LaTeX variants
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1),
    (r"\boxed{-\frac{1}{3}}", "-1/3", 1),
    (r"\boxed{\frac{1}{3}}", "0.333", 0),                         # no rounding tolerance
    (r"\boxed{5 cm}", "5", 1),                                    # units
    (r"\boxed{5\text{ cm}}", "5", 1),
    (r"\boxed{30^\circ}", "30", 1),
    (r"\boxed{30°}", "30", 0),                                    # the unicode degree sign is not removed
    (r"\boxed{1,000}", "1000", 1),
    (r"\boxed{45}", "45.0", 1),
    (r"\boxed{x = 2}", "2", 1),
    (r"\boxed{B}", "B", 1),                                       # multiple-choice letters
    (r"\boxed{b}", "B", 1),
    (r"\boxed{(B)}", "B", 1),
    (r"\boxed{B. 45}", "B", 0),
    (r"\boxed{C}", "B", 0),
    (r"<think>maybe \boxed{3}</think> so \boxed{4}", "4", 1),     # the LAST box counts
    (r"<think>so \boxed{4}</think> the answer is 4", "4", 1),     # a box inside think still counts
    (r"<think>\boxed{4}</think>", "3", 0),
    ("the answer is 4", "4", 0),                                  # no box, no credit
    (r"\boxed{4", "4", 0),                                        # unclosed box
]


@pytest.mark.parametrize("response,label,expected", TRICKY)
def test_grader_matches_hand_table_and_mathruler(response, label, expected):
    graded = grade(response, label)
    assert graded.accuracy == expected
    boxed = extract_boxed_content(response.replace(" / ", "/"))
    direct = boxed != "None" and grade_answer(boxed, label)
    assert bool(graded.accuracy) == bool(direct)


def test_lmms_eval_scoring_hook_uses_the_same_grader():
    responses = [r for r, _, _ in TRICKY]
    labels = {r: lbl for r, lbl, _ in TRICKY}
    for response in responses:
        record = tasklib.process_results({"answer": labels[response], "row_id": "x"}, [response])[tasklib.METRIC]
        assert record["correct"] == [int(grade(response, labels[response]).accuracy)]
        assert record["extracted"] == [grade(response, labels[response]).extracted]
