"""The mini study's task family: questions about a 3x3 grid of coloured cells, answerable only by looking.

For Qwen2.5-VL every picture is 84x84 pixels: nine 28x28 cells, each white (empty) or filled red, green or blue.
28 pixels is one merged Qwen2.5-VL vision token (14-pixel patches, 2x2 merge), so each cell is exactly one vision
token and perception is a per-token question. Other model families get cells of whole merged tokens of their own
(:func:`cell_size`: Qwen3-VL 96 px, 3x3 of its 32 px tokens, because its processor never sees less than 256x256
pixels and would otherwise resample the picture). Kinds (:data:`KINDS`):

- ``majority``: "Which colour fills the most cells?" -> red, green or blue (never a tie);
- ``filled``: "How many cells are filled?" -> a number 0-9;
- ``control``: "What colour is snow?" with a grid picture that has nothing to do with it: the words alone
  answer it (the study's control split: a method's vision dependency should be near zero here).

Kinds that need the question's words and the picture together (count the red cells, the colour of the top
left cell) were tried first: a 1M-parameter model does not learn them in a CPU-sized warm start, so the
study would start at chance.

The response a model is taught in the warm start (:func:`reference_response`) repeats the question's key words
and answers: ``<think> most cells </think> \\boxed{blue}``. The boxed answer is the only token that needs the
picture; the analysis of the study separates answer and format tokens (:func:`token_roles`).

Everything is a pure function of (split seed, index): the same seed gives byte-identical pictures.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageDraw

from vppo.model_families import DEFAULT_FAMILY, ModelFamily
from vppo.rollout import IMAGE_PLACEHOLDER

GRID = 3
CELL = 28  # pixels: one merged Qwen2.5-VL vision token (the default family's cell_size)
SIZE = GRID * CELL
#: Fill colour of each cell value; "white" is an empty cell.
COLOURS = {"white": (255, 255, 255), "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220)}
FILLED = ("red", "green", "blue")
#: The control kind's questions: a colour known from the words alone.
FACTS = {"grass": "green", "the sky": "blue", "a tomato": "red", "snow": "white", "a leaf": "green",
         "the sea": "blue", "blood": "red", "milk": "white"}
#: Question kinds that need the picture, and the text-only control kind.
IMAGE_KINDS = ("majority", "filled")
KINDS = IMAGE_KINDS + ("control",)
#: Split name -> seed of its stream; the held-out and control splits never share a (seed, index) with training.
SPLIT_SEEDS = {"train": 0, "heldout": 1, "control": 2}


def cell_size(family: ModelFamily = DEFAULT_FAMILY) -> int:
    """Side in pixels of a cell for ``family``: whole merged vision tokens (its resize factor), as few as leave the
    picture at or above the family's evaluation minimum, so no processor resamples it (Qwen2.5-VL: one 28 px
    token, 84 px pictures over a 56x56 minimum; Qwen3-VL: 3x3 of its 32 px tokens, 288 px over 256x256)."""
    tokens = 1
    while (GRID * tokens * family.resize_factor) ** 2 < family.processor_bounds.min_pixels:
        tokens += 1
    return tokens * family.resize_factor


def cell_size_of(family_key: str | None) -> int:
    """:func:`cell_size` of a family named by its key (None: the default family); ValueError for an unknown key."""
    from vppo.model_families import get_family

    return cell_size(get_family(family_key) if family_key else DEFAULT_FAMILY)


def draw_grid(cells: list[str], cell: int = CELL) -> Image.Image:
    """The RGB picture (side ``GRID * cell``) of nine cell values (row-major)."""
    image = Image.new("RGB", (GRID * cell, GRID * cell), COLOURS["white"])
    draw = ImageDraw.Draw(image)
    for i, value in enumerate(cells):
        if value != "white":
            x, y = (i % GRID) * cell, (i // GRID) * cell
            draw.rectangle([x + 2, y + 2, x + cell - 3, y + cell - 3], fill=COLOURS[value])
    return image


def _question(kind: str, cells: list[str], rng: np.random.Generator) -> tuple[str, str, list[str]]:
    """(question, answer, the question's key words: what the reference reasoning repeats)."""
    if kind == "majority":
        counts = {c: cells.count(c) for c in FILLED}
        while sorted(counts.values())[-1] == sorted(counts.values())[-2]:  # redraw until one colour leads
            cells[int(rng.integers(GRID * GRID))] = str(rng.choice(FILLED))
            counts = {c: cells.count(c) for c in FILLED}
        return "Which colour fills the most cells?", max(counts, key=counts.get), ["most", "cells"]
    if kind == "filled":
        return "How many cells are filled?", str(sum(c != "white" for c in cells)), ["filled", "cells"]
    if kind == "control":
        thing = str(rng.choice(sorted(FACTS)))
        return f"What colour is {thing}?", FACTS[thing], [thing.split()[-1]]
    raise ValueError(f"vppo/data/mini_task.py: unknown kind {kind!r}; choose from {KINDS}")


def mini_example(split: str, index: int, kinds: tuple[str, ...] = IMAGE_KINDS, cell: int = CELL) -> dict:
    """One question of ``split`` (a key of :data:`SPLIT_SEEDS`): id, kind, problem (with ``<image>``),
    answer, the nine cell values and the picture (cells of ``cell`` pixels: :func:`cell_size`). The kind cycles
    through ``kinds`` with the index; the cell size changes the picture's scale only."""
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    cells = [str(c) for c in rng.choice(list(COLOURS), size=GRID * GRID)]
    kind = kinds[index % len(kinds)]
    question, answer, hint = _question(kind, cells, rng)
    return {"id": f"mini-{split}-{index:05d}", "kind": kind, "problem": f"{IMAGE_PLACEHOLDER}{question}",
            "answer": answer, "hint": hint, "cells": cells, "image": draw_grid(cells, cell)}


def reference_response(example: dict) -> str:
    """The response the warm start teaches: the question's key words inside <think>, then the answer."""
    return f"<think> {' '.join(example['hint'])} </think> \\boxed{{{example['answer']}}}"


#: Token roles of :func:`token_roles`.
ROLES = ("perception", "answer", "format")
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_WORD = re.compile(r"[a-z]+")


def role_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, role) character spans of a response: colour words inside <think> are perception, the
    content of \\boxed{...} is the answer; every other character is format."""
    spans = []
    for think in _THINK.finditer(text):
        for word in _WORD.finditer(think.group(1)):
            if word.group() in COLOURS:
                spans.append((think.start(1) + word.start(), think.start(1) + word.end(), "perception"))
    spans += [(box.start(1), box.end(1), "answer") for box in _BOXED.finditer(text) if box.end(1) > box.start(1)]
    return spans


def token_roles(response_tokens: list[str]) -> list[str]:
    """Each decoded response token's role (:data:`ROLES`): the role of the first span its characters touch."""
    text = "".join(response_tokens)
    spans = role_spans(text)
    roles, offset = [], 0
    for token in response_tokens:
        end = offset + len(token)
        role = next((r for s, e, r in spans if s < end and offset < e), "format")
        roles.append(role)
        offset = end
    return roles


#: The study's evaluation benchmarks (registered in vppo.catalog): key -> (split, kinds).
EVAL_SETS = {"mini_heldout": ("heldout", IMAGE_KINDS), "mini_control": ("control", ("control",))}


def write_llamafactory_mini(root, n_rows: int, keys: list[str], cell: int = CELL) -> "Path":
    """The evaluation sets ``keys`` (of :data:`EVAL_SETS`) in VPPO-Eval's LLaMA-Factory layout under ``root``, so
    ``prepare-data eval --source mini`` runs the importer the real data runs. Rows 0..n_rows-1 of each split,
    cells of ``cell`` pixels."""
    from vppo.data.eval_fixtures import write_llamafactory_rows

    rows = {}
    for key in keys:
        split, kinds = EVAL_SETS[key]
        examples = (mini_example(split, i, kinds, cell) for i in range(n_rows))
        rows[key] = [(e["problem"].removeprefix(IMAGE_PLACEHOLDER), e["answer"], e["image"]) for e in examples]
    return write_llamafactory_rows(root, rows)
