"""A tiny Japanese VQA data set in the local-folder format of ``evomm.data.vqa``.

Every image is a 32x32 PNG drawn with PIL: one coloured shape (circle, square or triangle) on a
grey background. Each record carries two Japanese question/answer pairs, colour first, so that
"first QA per image" (the paper's rule) picks the colour question:

    これは何色ですか？   -> 赤 / 青 / 緑 / 黄色 / 白 / 黒
    これはどんな形ですか？ -> 丸 / 四角 / 三角

``write_tiny_vqa(out_dir)`` writes ``train.jsonl`` and ``test.jsonl`` in the JA-VG-VQA-500 layout
(image_id, url, width, height, image, qas); ``kind="ja_vlm_bench"`` writes ``test.jsonl`` in the
JA-VLM-Bench-In-the-Wild layout (page_url, image_url, image, question, answer). Images live
under ``images/`` and records name them by relative path. Everything is seeded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from evomm.builtin import DATASETS

SIZE = 32
BACKGROUND = (128, 128, 128)

# (Japanese answer, RGB)
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("赤", (220, 30, 30)),
    ("青", (30, 60, 220)),
    ("緑", (30, 170, 60)),
    ("黄色", (240, 220, 30)),
    ("白", (250, 250, 250)),
    ("黒", (10, 10, 10)),
)
SHAPES: tuple[str, ...] = ("丸", "四角", "三角")

COLOUR_QUESTION = "これは何色ですか？"
SHAPE_QUESTION = "これはどんな形ですか？"
KINDS = ("ja_vg_vqa", "ja_vlm_bench")


def texts() -> list[str]:
    """Every question and answer the data can contain (the tiny tokenizers must cover them)."""
    return [COLOUR_QUESTION, SHAPE_QUESTION, *(c for c, _ in COLOURS), *SHAPES]


def draw(shape: str, rgb: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """One SIZE x SIZE RGB image with ``shape`` in colour ``rgb`` at a slightly jittered place."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    r = rng.randint(8, 12)  # half-size of the shape in pixels
    cx, cy = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "丸":
        pen.ellipse(box, fill=rgb)
    elif shape == "四角":
        pen.rectangle(box, fill=rgb)
    elif shape == "三角":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    return image


def _items(n: int, rng: random.Random) -> list[tuple[str, str, tuple[int, int, int]]]:
    """n (shape, colour name, rgb) triples, cycling through all combinations in a seeded order."""
    combos = [(s, c, rgb) for s in SHAPES for c, rgb in COLOURS]
    rng.shuffle(combos)
    return [combos[i % len(combos)] for i in range(n)]


def write_tiny_vqa(
    out_dir: str | Path,
    n_train: int = 16,
    n_test: int = 8,
    seed: int = 0,
    kind: str = "ja_vg_vqa",
) -> Path:
    """Write the tiny data set into ``out_dir`` and return it.

    kind="ja_vg_vqa": train.jsonl (n_train records) and test.jsonl (n_test records).
    kind="ja_vlm_bench": test.jsonl only (n_test records); n_train is ignored.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    splits = {"train": n_train, "test": n_test} if kind == "ja_vg_vqa" else {"test": n_test}
    next_id = 0
    for split, n in splits.items():
        lines = []
        for i, (shape, colour, rgb) in enumerate(_items(n, rng)):
            rel = f"images/{split}_{i:04d}.png"
            draw(shape, rgb, rng).save(out / rel)
            if kind == "ja_vg_vqa":
                record = {
                    "image_id": next_id,
                    "url": "",
                    "width": SIZE,
                    "height": SIZE,
                    "image": rel,
                    "qas": [
                        {"question": COLOUR_QUESTION, "answer": colour, "qa_id": 2 * next_id,
                         "objects": []},
                        {"question": SHAPE_QUESTION, "answer": shape, "qa_id": 2 * next_id + 1,
                         "objects": []},
                    ],
                }
            else:
                record = {
                    "page_url": "",
                    "image_url": "",
                    "image": rel,
                    "question": COLOUR_QUESTION,
                    "answer": colour,
                }
            next_id += 1
            lines.append(json.dumps(record, ensure_ascii=False))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


# The built-in data sets (``dataset: builtin:tiny-vqa`` in a task config).
BUILTIN_DATASETS = {"tiny-vqa": "ja_vg_vqa", "tiny-vlm-bench": "ja_vlm_bench"}
for _name, _kind in BUILTIN_DATASETS.items():
    DATASETS.add(_name, lambda out, kind=_kind: write_tiny_vqa(out, kind=kind))
