"""Offline fixtures of the eight benchmarks, written in chamber111/VPPO-Eval's own layout.

:func:`write_llamafactory_fixtures` writes ``ROOT/data/vppo/<name>.json`` (rows ``{"messages", "images"}``),
``ROOT/data/images/<name>/<i>.png`` referenced as ``./data/images/<name>/<i>.png`` and ``ROOT/data/dataset_info.json``,
with the LLaMA-Factory names of :data:`vppo.data.llamafactory.DATASET_NAMES`, so ``prepare-data eval --source
fixtures`` runs the importer the hub download runs. Questions are deterministic drawings with a known answer;
the images cycle through sizes and modes that exercise the protocol's resize (too large, too small, one side
under 28 px with an extreme aspect ratio, palette / grey / alpha modes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from vppo.catalog import BENCHMARKS, Benchmark
from vppo.data.llamafactory import DATA_DIR, DATASET_INFO, DATASET_NAMES, JSON_DIR
from vppo.fileio import write_text_atomic
from vppo.rollout import IMAGE_PLACEHOLDER, REASONING_INSTRUCTION

#: Image sizes cycled through by the tiny model's warm start: ordinary, too large (downscaled), too small
#: (upscaled).
FIXTURE_SIZES = ((224, 168), (900, 880), (20, 24), (320, 240), (112, 300))
#: The fixture files' sizes, row by row: the warm start's, plus a 6000x20 strip (its short side is raised to
#: 28 px, then its aspect ratio clamped to 180). The large 900x880 comes fifth: the CPU smoke run evaluates the
#: first rows only, and at Qwen's default bounds that image alone is ~750 image tokens.
FIXTURE_FILE_SIZES = ((224, 168), (20, 24), (320, 240), (112, 300), (900, 880), (6000, 20))
FIXTURE_MODES = ("RGB", "P", "RGB", "L", "RGBA", "RGB", "P")


def _fixture_question(kind: str, rng: random.Random) -> tuple[str, str, list[tuple[str, str]]]:
    """(question, answer, labels to draw) of one fixture row of the given answer kind."""
    if kind == "number":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"The rectangle has sides {a} and {b}. What is its area?", str(a * b), [(str(a), "w"), (str(b), "h")]
    if kind == "expression":
        p, q = rng.randint(1, 5), rng.randint(6, 9)
        return (f"A segment of length {p} is cut from a segment of length {q}. Express the ratio of the pieces "
                f"as a fraction.", f"\\frac{{{p}}}{{{q - p}}}", [(f"{p}", "w"), (f"{q}", "h")])
    options = [rng.randint(10, 99) for _ in range(4)]
    correct = rng.randrange(4)
    letters = "ABCD"
    choices = "\n".join(f"{letters[i]}. {v}" for i, v in enumerate(options))
    return (f"Which value is written in the box?\nChoices:\n{choices}", letters[correct],
            [(str(options[correct]), "w")])


def _draw_fixture_image(labels: list[tuple[str, str]], size: tuple[int, int], rng: random.Random) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([w // 8, h // 8, 7 * w // 8, 7 * h // 8], outline=(rng.randint(0, 200), 0, 0), width=2)
    for i, (text, _) in enumerate(labels):
        draw.text((w // 4, h // 4 + i * max(h // 6, 8)), text, fill=(0, 0, 0))
    return img


def _sharegpt(row_id: str, image: str, question: str, answer: str) -> dict:
    """One row as VPPO-Eval stores it: the user turn ``<image>`` + question + the reasoning instruction."""
    del row_id  # VPPO-Eval rows carry no id: a row is its index
    return {"messages": [{"role": "user", "content": f"<image>{question}\n\n{REASONING_INSTRUCTION}"},
                         {"role": "assistant", "content": answer}],
            "images": [image]}


def _dataset_info_entry(name: str) -> dict:
    return {"file_name": f"{JSON_DIR}/{name}.json", "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}


#: Images of the planted multi-image row: MMMU-Pro's largest question has 7 (the official engine allows 10).
MULTI_IMAGE_COUNT = 7


def _multi_image_row(reference_of: Callable[[int], str], n_images: int, size: tuple[int, int] = (56, 42)
                     ) -> tuple[dict, list[Image.Image]]:
    """One row with ``n_images`` pictures, each ``<image>`` where it is named (MMMU-Pro's layout); the
    answer is the number of the picture holding the box."""
    images = []
    for k in range(n_images):
        img = Image.new("RGB", size, (255, 255, 255))
        if k == n_images - 1:
            ImageDraw.Draw(img).rectangle([8, 8, size[0] - 8, size[1] - 8], outline=(0, 0, 0), width=2)
        images.append(img)
    listing = "\n".join(f"Picture {k + 1}: {IMAGE_PLACEHOLDER}" for k in range(n_images))
    question = f"{listing}\nWhich picture shows a box? Answer with its number."
    row = {"messages": [{"role": "user", "content": f"{question}\n\n{REASONING_INSTRUCTION}"},
                        {"role": "assistant", "content": str(n_images)}],
           "images": [reference_of(k) for k in range(n_images)]}
    return row, images


def write_llamafactory_fixtures(root: str | Path, n_rows: int = 5, seed: int = 0,
                                benchmarks: list[Benchmark] | None = None, plant_empty_answer: bool = False,
                                multi_image_row: int = 0) -> Path:
    """Fixture rows for each benchmark in the VPPO-Eval layout under ``root`` (see module docstring).

    ``plant_empty_answer`` appends one row whose answer is empty (it must be scored, and always wrong);
    ``multi_image_row`` (a number of images, 0: none) appends one row with that many images, placeholders in
    its text (the evaluation engine must take it: MMMU-Pro has questions with up to 7 images).
    """
    root = Path(root)
    data = root / DATA_DIR
    info = {}
    for bench in benchmarks or BENCHMARKS:
        name = DATASET_NAMES[bench.key]
        rng = random.Random(f"{seed}-{bench.key}")
        (data / "images" / name).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n_rows):
            question, answer, labels = _fixture_question(bench.answer_kind, rng)
            reference = f"./data/images/{name}/{i:04d}.png"
            image = _draw_fixture_image(labels, FIXTURE_FILE_SIZES[i % len(FIXTURE_FILE_SIZES)], rng)
            image.convert(FIXTURE_MODES[i % len(FIXTURE_MODES)]).save(root / reference)
            rows.append(_sharegpt(str(i), reference, question, answer))
        if plant_empty_answer:
            rows.append(_sharegpt("empty", rows[0]["images"][0], "Question without an answer?", ""))
        if multi_image_row:
            row, images = _multi_image_row(lambda k: f"./data/images/{name}/multi-{k}.png", int(multi_image_row))
            for reference, image in zip(row["images"], images):
                image.save(root / reference)
            rows.append(row)
        write_text_atomic(data / JSON_DIR / f"{name}.json", json.dumps(rows, indent=1) + "\n")
        info[name] = _dataset_info_entry(name)
    write_text_atomic(data / DATASET_INFO, json.dumps(info, indent=1) + "\n")
    return root


def write_llamafactory_rows(root: str | Path, rows: dict[str, list[tuple[str, str, Image.Image]]]) -> Path:
    """Given rows (question, answer, picture) per benchmark key, in the same layout as the fixtures (RGB PNGs)."""
    root = Path(root)
    data = root / DATA_DIR
    info = {}
    for key, items in rows.items():
        name = DATASET_NAMES[key]
        (data / "images" / name).mkdir(parents=True, exist_ok=True)
        records = []
        for i, (question, answer, image) in enumerate(items):
            reference = f"./data/images/{name}/{i:04d}.png"
            image.save(root / reference)
            records.append(_sharegpt(str(i), reference, question, answer))
        write_text_atomic(data / JSON_DIR / f"{name}.json", json.dumps(records, indent=1) + "\n")
        info[name] = _dataset_info_entry(name)
    write_text_atomic(data / DATASET_INFO, json.dumps(info, indent=1) + "\n")
    return root
