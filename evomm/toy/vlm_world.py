"""The built-in toy VLM world: a small, fair analogue of EvoVLM-JP.

The paper merges the language model of an English VLM (LLaVA) with a Japanese LLM (both
fine-tunes of Mistral-7B) and asks the merge questions about images in Japanese. Here:

* IMAGES   32x32 PNGs drawn with PIL: one filled shape (circle / square / triangle) in one of six
           colours on a grey background, at a given half-size ``r`` and centre ``(cx, cy)``.
* English VQA (the VLM's skill)      ``<image>\\nq: what colour is the shape? a:`` -> ``red``
                                     ``<image>\\nq: what shape is it? a:``         -> ``circle``
* Japanese text Q/A (the Japanese model's skill)
                                     ``問: りんご は 何色 ですか? 答:``   -> ``赤``
                                     ``問: ボール は どんな 形 ですか? 答:`` -> ``丸``
* the TARGET, Japanese VQA           ``<image>\\n問: これ は 何色 ですか? 答:`` -> ``赤``
  No training corpus pairs an image with a Japanese answer: the target needs the VLM's seeing
  and the Japanese model's language at once.
* Text corpora for the common base LM (the analogue of Mistral-7B's multilingual pre-training):
  English and Japanese sentences and Q/A about the colours and shapes of everyday things, and
  parallel English/Japanese lines (sentences, questions without answers, a glossary).

Splits. Every scene (shape, colour, r, cx, cy) is distinct, hence so is every image. Per
(shape, colour) combination a seeded shuffle deals scenes to the FITNESS split, then to the
HELD-OUT split, and the rest to the VLM's TRAINING pool: the three share no scene and no image.
The Japanese Q/A facts are dealt alternately (seeded shuffle) to a fitness and a held-out half.

``write_world(out_dir)`` writes the evaluation data as local folders that ``evomm.data.vqa`` reads
(``train.jsonl`` is the fitness split and ``test.jsonl`` the held-out split, as in
JA-VG-VQA-500)::

    en_vqa/{train,test}.jsonl + images/   English VQA, JA-VG-VQA-500 layout (first QA is asked)
    ja_vqa/{train,test}.jsonl + images/   the same images, asked in Japanese (the target)
    ja_qa/{train,test}.jsonl              Japanese text Q/A, {"question", "answer"} per line

``world_dir()`` writes them once under ``$EVOMM_HOME/data/toy-vlm-world`` and returns the folder.
Everything is deterministic; the only randomness is seeded shuffles.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from evomm.builtin import build_once, evomm_home
from evomm.toy.world import corpus_of, sample_from

SIZE = 32
BACKGROUND = (128, 128, 128)


@dataclass(frozen=True)
class Colour:
    en: str
    ja: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Shape:
    en: str
    ja: str


COLOURS: tuple[Colour, ...] = (
    Colour("red", "赤", (220, 30, 30)),
    Colour("blue", "青", (30, 60, 220)),
    Colour("green", "緑", (30, 170, 60)),
    Colour("yellow", "黄色", (240, 220, 30)),
    Colour("white", "白", (250, 250, 250)),
    Colour("black", "黒", (10, 10, 10)),
)
SHAPES: tuple[Shape, ...] = (Shape("circle", "丸"), Shape("square", "四角"), Shape("triangle", "三角"))
RADII = range(7, 12)  # half-size of a shape in pixels

# ---------------------------------------------------------------------------------------------
# Prompts. The VQA ones are format strings for the ``prompt`` option of tasks/ja_vg_vqa.py.

EN_VQA_PROMPT = "{image}\nq: {question} a:"
JA_VQA_PROMPT = "{image}\n問: {question} 答:"
JA_QA_PROMPT = "問: {question} 答:"

EN_COLOUR_QUESTION = "what colour is the shape?"
EN_SHAPE_QUESTION = "what shape is it?"
JA_COLOUR_QUESTION = "これ は 何色 ですか?"
JA_SHAPE_QUESTION = "これ は どんな 形 ですか?"

QUESTION_KINDS = ("colour", "shape")


# ---------------------------------------------------------------------------------------------
# Scenes and images


@dataclass(frozen=True)
class Scene:
    shape: Shape
    colour: Colour
    r: int
    cx: int
    cy: int

    @property
    def combo(self) -> tuple[str, str]:
        return (self.shape.en, self.colour.en)

    def image(self) -> Image.Image:
        """The SIZE x SIZE RGB picture of this scene."""
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
        pen = ImageDraw.Draw(image)
        r, cx, cy, rgb = self.r, self.cx, self.cy, self.colour.rgb
        box = (cx - r, cy - r, cx + r, cy + r)
        if self.shape.en == "circle":
            pen.ellipse(box, fill=rgb)
        elif self.shape.en == "square":
            pen.rectangle(box, fill=rgb)
        else:  # triangle, apex up
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
        return image

    def answer(self, kind: str, lang: str) -> str:
        thing = self.colour if kind == "colour" else self.shape
        return thing.en if lang == "en" else thing.ja


def question(kind: str, lang: str) -> str:
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(QUESTION_KINDS)}")
    if lang == "en":
        return EN_COLOUR_QUESTION if kind == "colour" else EN_SHAPE_QUESTION
    return JA_COLOUR_QUESTION if kind == "colour" else JA_SHAPE_QUESTION


def all_scenes() -> list[Scene]:
    """Every scene: 18 combinations x 5 sizes x every centre that keeps the shape inside (13,680)."""
    scenes = []
    for shape in SHAPES:
        for colour in COLOURS:
            for r in RADII:
                # one pixel of margin on every side: the shape spans [c - r, c + r]
                for cx in range(r + 1, SIZE - 1 - r):
                    for cy in range(r + 1, SIZE - 1 - r):
                        scenes.append(Scene(shape, colour, r, cx, cy))
    return scenes


SCENE_SPLITS = ("train", "fitness", "heldout")
FITNESS_PER_COMBO = 4  # 72 fitness images
HELDOUT_PER_COMBO = 8  # 144 held-out images


def scene_splits(seed: int = 0) -> dict[str, list[Scene]]:
    """Disjoint scene lists: ``fitness`` and ``heldout`` (evaluation), ``train`` (the VLM's pool).

    Per (shape, colour) combination, a seeded shuffle deals FITNESS_PER_COMBO scenes to fitness,
    HELDOUT_PER_COMBO to held-out and the rest to train, so every split holds every combination.
    """
    by_combo: dict[tuple[str, str], list[Scene]] = {}
    for scene in all_scenes():
        by_combo.setdefault(scene.combo, []).append(scene)
    rng = random.Random(seed)
    out: dict[str, list[Scene]] = {name: [] for name in SCENE_SPLITS}
    for combo in sorted(by_combo):
        scenes = by_combo[combo]
        rng.shuffle(scenes)
        out["fitness"] += scenes[:FITNESS_PER_COMBO]
        out["heldout"] += scenes[FITNESS_PER_COMBO : FITNESS_PER_COMBO + HELDOUT_PER_COMBO]
        out["train"] += scenes[FITNESS_PER_COMBO + HELDOUT_PER_COMBO :]
    return out


@dataclass(frozen=True)
class VQAQuestion:
    """One question about one scene, in one language."""

    scene: Scene
    kind: str  # "colour" or "shape"
    lang: str  # "en" or "ja"

    @property
    def question(self) -> str:
        return question(self.kind, self.lang)

    @property
    def answer(self) -> str:
        return self.scene.answer(self.kind, self.lang)


def vqa_questions(split: str, lang: str, seed: int = 0) -> list[VQAQuestion]:
    """The asked question of each scene of an evaluation split: colour and shape alternate, so each
    combination is asked both (FITNESS_PER_COMBO / 2 of each kind in the fitness split)."""
    if split not in ("fitness", "heldout"):
        raise ValueError(f"unknown evaluation split {split!r}; known: fitness, heldout")
    scenes = scene_splits(seed)[split]
    return [VQAQuestion(s, QUESTION_KINDS[i % 2], lang) for i, s in enumerate(scenes)]


# ---------------------------------------------------------------------------------------------
# Everyday things, English and Japanese side by side (Japanese words separated by spaces, so a
# character-level model sees word boundaries in both languages).

# (English thing, Japanese thing, colour)
COLOUR_FACTS: tuple[tuple[str, str, str], ...] = (
    ("apple", "りんご", "red"), ("strawberry", "いちご", "red"), ("tomato", "トマト", "red"),
    ("cherry", "さくらんぼ", "red"),
    ("sky", "そら", "blue"), ("sea", "うみ", "blue"), ("pool", "プール", "blue"),
    ("blueberry", "ブルーベリー", "blue"),
    ("grass", "くさ", "green"), ("leaf", "はっぱ", "green"), ("frog", "かえる", "green"),
    ("cucumber", "きゅうり", "green"),
    ("banana", "バナナ", "yellow"), ("lemon", "レモン", "yellow"), ("chick", "ひよこ", "yellow"),
    ("sunflower", "ひまわり", "yellow"),
    ("snow", "ゆき", "white"), ("milk", "ぎゅうにゅう", "white"), ("cloud", "くも", "white"),
    ("rice", "ごはん", "white"),
    ("crow", "からす", "black"), ("night", "よる", "black"), ("ink", "すみ", "black"),
    ("coal", "せきたん", "black"),
)
# (English thing, Japanese thing, shape)
SHAPE_FACTS: tuple[tuple[str, str, str], ...] = (
    ("ball", "ボール", "circle"), ("coin", "コイン", "circle"), ("wheel", "タイヤ", "circle"),
    ("clock", "とけい", "circle"), ("plate", "おさら", "circle"),
    ("box", "はこ", "square"), ("window", "まど", "square"), ("dice", "さいころ", "square"),
    ("tile", "タイル", "square"),
    ("rice ball", "おにぎり", "triangle"), ("mountain", "やま", "triangle"),
    ("pyramid", "ピラミッド", "triangle"), ("sandwich", "サンドイッチ", "triangle"),
)

_COLOUR = {c.en: c for c in COLOURS}
_SHAPE = {s.en: s for s in SHAPES}


def _fact_qa() -> list[tuple[str, str, str, str]]:
    """Every fact as (English question, English answer, Japanese question, Japanese answer)."""
    qa = []
    for en, ja, colour in COLOUR_FACTS:
        qa.append((f"what colour is the {en}?", colour, f"{ja} は 何色 ですか?", _COLOUR[colour].ja))
    for en, ja, shape in SHAPE_FACTS:
        qa.append((f"what shape is the {en}?", shape, f"{ja} は どんな 形 ですか?", _SHAPE[shape].ja))
    return qa


def _sentence_pairs() -> list[tuple[str, str]]:
    pairs = []
    for en, ja, colour in COLOUR_FACTS:
        pairs.append((f"the {en} is {colour}.", f"{ja} は {_COLOUR[colour].ja} です。"))
    for en, ja, shape in SHAPE_FACTS:
        pairs.append((f"the {en} is a {shape}.", f"{ja} は {_SHAPE[shape].ja} です。"))
    for colour in COLOURS:
        for shape in SHAPES:
            pairs.append((f"this is a {colour.en} {shape.en}.", f"これ は {colour.ja} の {shape.ja} です。"))
    return pairs


def english_text() -> list[str]:
    return [en for en, _ in _sentence_pairs()]


def english_qa() -> list[str]:
    return [f"q: {q} a: {a}" for q, a, _, _ in _fact_qa()]


def japanese_text() -> list[str]:
    return [ja for _, ja in _sentence_pairs()]


def japanese_qa() -> list[str]:
    return [JA_QA_PROMPT.format(question=q) + f" {a}" for _, _, q, a in _fact_qa()]


def bilingual() -> list[str]:
    """Parallel lines: sentences, questions without answers and a glossary (no image, no answer
    to an image question)."""
    lines = [f"en: {en} ja: {ja}" for en, ja in _sentence_pairs()]
    lines += [f"en: {q_en} ja: {q_ja}" for q_en, _, q_ja, _ in _fact_qa()]
    glossary = [(c.en, c.ja) for c in COLOURS] + [(s.en, s.ja) for s in SHAPES]
    glossary += [(en, ja) for en, ja, _ in COLOUR_FACTS + SHAPE_FACTS]
    glossary += [("colour", "色"), ("shape", "形"), ("what colour", "何色"), ("this", "これ"),
                 ("question", "問"), ("answer", "答")]
    glossary += [(question(k, "en"), question(k, "ja")) for k in QUESTION_KINDS]
    lines += [f"en: {en} ja: {ja}" for en, ja in sorted(set(glossary))]
    return lines


CORPORA: dict[str, Callable[[], list[str]]] = {
    "english_text": english_text,
    "english_qa": english_qa,
    "japanese_text": japanese_text,
    "japanese_qa": japanese_qa,
    "bilingual": bilingual,
}


def corpus(name: str) -> list[str]:
    return corpus_of(CORPORA, name)


def sample_mix(mix: dict[str, float], n: int, seed: int) -> list[str]:
    """``n`` training lines drawn (seeded, with replacement) from corpora weighted by ``mix``."""
    return sample_from(CORPORA, mix, n, seed)


# ---------------------------------------------------------------------------------------------
# Japanese text Q/A evaluation halves


def ja_qa_split(split: str, seed: int = 0) -> list[dict[str, str]]:
    """Japanese Q/A facts of one half, as {"question", "answer"}: even positions of a seeded
    shuffle are the fitness half, odd positions the held-out half."""
    if split not in ("fitness", "heldout"):
        raise ValueError(f"unknown split {split!r}; known: fitness, heldout")
    items = sorted((q, a) for _, _, q, a in _fact_qa())
    random.Random(seed).shuffle(items)
    half = items[0::2] if split == "fitness" else items[1::2]
    return [{"question": q, "answer": a} for q, a in half]


# ---------------------------------------------------------------------------------------------
# Folders

FILES = {"fitness": "train", "heldout": "test"}  # split -> file stem (JA-VG-VQA-500's names)
FOLDERS = ("en_vqa", "ja_vqa", "ja_qa")


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def write_world(out_dir: str | Path, seed: int = 0) -> Path:
    """Write en_vqa/, ja_vqa/ and ja_qa/ (see the module docstring) into ``out_dir``."""
    out = Path(out_dir)
    for lang in ("en", "ja"):
        folder = out / f"{lang}_vqa"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        next_id = 0  # image ids are unique across both splits
        for split, stem in FILES.items():
            records = []
            for i, q in enumerate(vqa_questions(split, lang, seed)):
                rel = f"images/{stem}_{i:04d}.png"
                q.scene.image().save(folder / rel)
                other = "shape" if q.kind == "colour" else "colour"
                records.append({
                    "image_id": next_id, "url": "", "width": SIZE, "height": SIZE, "image": rel,
                    "qas": [  # the first pair is the one asked (JA-VG-VQA-500's rule)
                        {"question": q.question, "answer": q.answer, "qa_id": 2 * next_id, "objects": []},
                        {"question": question(other, lang), "answer": q.scene.answer(other, lang),
                         "qa_id": 2 * next_id + 1, "objects": []},
                    ],
                })
                next_id += 1
            _write_lines(folder / f"{stem}.jsonl", records)
    (out / "ja_qa").mkdir(parents=True, exist_ok=True)
    for split, stem in FILES.items():
        _write_lines(out / "ja_qa" / f"{stem}.jsonl", ja_qa_split(split, seed))
    return out


WORLD_NAME = "toy-vlm-world"


def builtin_world_path() -> Path:
    """Where the built-in world lives: ``$EVOMM_HOME/data/toy-vlm-world`` (maybe not written yet)."""
    return evomm_home() / "data" / WORLD_NAME


def world_dir() -> Path:
    """The built-in world's folder, written on first use (atomically)."""
    return build_once(builtin_world_path(), write_world)
