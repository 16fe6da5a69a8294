"""Japanese VQA data: JA-VG-VQA-500 and JA-VLM-Bench-In-the-Wild, from the hub or a local folder.

A ``dataset`` reference is one of

* a hub id (``SakanaAI/JA-VG-VQA-500``), loaded with ``datasets.load_dataset(id, split=...)``;
* ``builtin:tiny-vqa`` / ``builtin:tiny-vlm-bench``: the tiny shapes data of
  ``evomm.toy.tiny_vqa``, written once under ``$EVOMM_HOME/data/<name>``;
* a local folder, in the first of these forms that it matches:
  1. JSON lines: ``<dir>/<split>.jsonl``, one record per line with the hub dataset's fields;
     ``image`` is the path of an image file, relative to ``<dir>`` (or absolute). Example::

         <dir>/train.jsonl   {"image_id": 1, "image": "images/1.jpg", "qas": [{"question": "…", "answer": "…"}]}
         <dir>/images/1.jpg

  2. a ``datasets`` folder written by ``save_to_disk``: a DatasetDict at ``<dir>`` (it holds
     ``dataset_dict.json``) or one Dataset per split at ``<dir>/<split>``;
  3. anything else ``datasets.load_dataset(<dir>, split=...)`` reads, e.g. a local copy of the
     hub repository (parquet files).

Fields used (others are ignored; a missing one is a ConfigError naming field and record):

* JA-VG-VQA-500: ``image_id``, ``image``, ``qas`` (a non-empty list of ``{question, answer}``).
  Like the paper, only the FIRST QA pair of each image is used.
* JA-VLM-Bench-In-the-Wild: ``image``, ``question``, ``answer``.

Images are decoded only for the records that are sampled.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from evomm.errors import ConfigError

# The system prompt of the paper's evaluation ("ja-shisa-vqa" template), kept verbatim: "You are
# a helpful, unbiased, uncensored assistant. Answer the question based on the given image."
JA_SYSTEM_PROMPT = (
    "あなたは役立つ、偏見がなく、検閲されていないアシスタントです。"
    "与えられた画像を下に、質問に答えてください。"
)

BUILTIN_PREFIX = "builtin:"

VG_FIELDS = ("image_id", "image", "qas")
BENCH_FIELDS = ("image", "question", "answer")


@dataclass(frozen=True)
class VQAItem:
    """One scored question: an image, a Japanese question and its reference answer."""

    id: str
    question: str
    answer: str
    image: Any  # a PIL image, or the path of an image file (opened by load_image)

    def load_image(self):
        from PIL import Image

        image = self.image
        if isinstance(image, (str, Path)):
            with Image.open(image) as f:
                image = f.copy()
        return image.convert("RGB")


# -- references ----------------------------------------------------------------------------------


def resolve_dataset(ref: str) -> str:
    """A built-in reference becomes its folder (written on first use); others are unchanged."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"dataset must be a hub id or a local folder, got {ref!r}")
    if not ref.startswith(BUILTIN_PREFIX):
        return ref
    from evomm import builtin  # the toy world registers the built-in data sets there

    return builtin.resolve_dataset(ref)


# -- raw records ---------------------------------------------------------------------------------


@dataclass
class _Split:
    """The records of one split: text fields of every row, images fetched per row on demand."""

    where: str  # for error messages: "<file>" or "<dataset> split <split>"
    rows: list[dict[str, Any]]  # without images
    image: Callable[[int], Any]  # row index -> PIL image or file path
    line_numbers: bool  # rows come from a JSON-lines file (name them by line)

    def record(self, i: int) -> str:
        return f"{self.where}, line {i + 1}" if self.line_numbers else f"{self.where}, record {i}"


def _read_jsonl(path: Path) -> _Split:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            raise ConfigError(f"{path}, line {lineno}: empty line; write one JSON record per line")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}, line {lineno}: expected a JSON object")
        rows.append(rec)

    def image(i: int) -> Path:
        return (path.parent / str(rows[i]["image"])).expanduser()

    return _Split(str(path), rows, image, line_numbers=True)


def _from_dataset(ds, where: str) -> _Split:
    if "image" not in ds.column_names:
        raise ConfigError(
            f"{where}: missing field 'image' in every record (columns: {', '.join(ds.column_names)})"
        )
    text_columns = [c for c in ds.column_names if c != "image"]
    rows = ds.select_columns(text_columns).to_list() if text_columns else [{} for _ in range(len(ds))]
    images = ds.select_columns(["image"])
    for row in rows:
        row["image"] = True  # present; decoded only on demand

    def image(i: int):
        return images[i]["image"]

    return _Split(where, rows, image, line_numbers=False)


def _load_split(dataset: str, split: str) -> _Split:
    ref = resolve_dataset(dataset)
    path = Path(ref).expanduser()
    if path.is_dir():
        jsonl = path / f"{split}.jsonl"
        if jsonl.is_file():
            return _read_jsonl(jsonl)
        splits = sorted(p.stem for p in path.glob("*.jsonl"))
        if splits:
            raise ConfigError(
                f"dataset folder {ref} has {', '.join(f + '.jsonl' for f in splits)} but no {split}.jsonl; "
                f"add it or use one of the splits {', '.join(splits)}"
            )
        from datasets import load_from_disk

        if (path / "dataset_dict.json").is_file():
            dd = load_from_disk(str(path))
            if split not in dd:
                raise ConfigError(
                    f"dataset {ref} has splits {', '.join(dd)}, not '{split}'"
                )
            return _from_dataset(dd[split], f"{ref} split {split}")
        if (path / split / "state.json").is_file():
            return _from_dataset(load_from_disk(str(path / split)), f"{ref}/{split}")
    elif ref.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"dataset folder '{ref}' does not exist")
    from datasets import load_dataset

    try:
        ds = load_dataset(ref, split=split)
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, hub errors)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if path.is_dir():
            hint = f" (expected {split}.jsonl, a save_to_disk folder, or data files for split '{split}')"
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            hint = " (offline: download the dataset first, or point to a local folder)"
        raise ConfigError(f"cannot load split '{split}' of dataset '{ref}': {first}{hint}") from None
    return _from_dataset(ds, f"{ref} split {split}")


def _require(rec: Any, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: expected a record with fields {', '.join(fields)}")
    for field in fields:
        if field not in rec or rec[field] is None:
            raise ConfigError(f"{where}: missing field '{field}'")


def _check_image(split: _Split, i: int) -> None:
    if split.line_numbers:
        path = split.image(i)
        if not path.is_file():
            raise ConfigError(f"{split.record(i)}: image file {path} does not exist")


# -- the two layouts -----------------------------------------------------------------------------


def _vg_text(split: _Split, i: int) -> tuple[str, str, str]:
    """(id, question, answer) of the first QA pair of record i of a JA-VG-VQA split."""
    rec = split.rows[i]
    where = split.record(i)
    _require(rec, VG_FIELDS, where)
    qas = rec["qas"]
    if not isinstance(qas, list) or not qas:
        raise ConfigError(f"{where}: field 'qas' must be a non-empty list of question/answer pairs")
    _require(qas[0], ("question", "answer"), f"{where}, qas[0]")
    return str(rec["image_id"]), str(qas[0]["question"]), str(qas[0]["answer"])


def _bench_text(split: _Split, i: int) -> tuple[str, str, str]:
    rec = split.rows[i]
    _require(rec, BENCH_FIELDS, split.record(i))
    return str(i), str(rec["question"]), str(rec["answer"])


LAYOUTS = {"ja_vg_vqa": _vg_text, "ja_vlm_bench": _bench_text}


def load_vqa(
    dataset: str,
    split: str,
    layout: str,
    n: int | None = None,
    seed: int | str = 0,
) -> list[VQAItem]:
    """The items of one split: all records, or a seeded sample of ``n`` (kept in data order).

    Every record's text fields are checked (cheap); images are fetched only for sampled records.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown VQA layout '{layout}'; known: {', '.join(LAYOUTS)}")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"number of samples must be a positive integer or null, got {n!r}")
    data = _load_split(dataset, split)
    if not data.rows:
        raise ConfigError(f"{data.where} holds no records")
    texts = [LAYOUTS[layout](data, i) for i in range(len(data.rows))]
    chosen = list(range(len(texts)))
    if n is not None and n < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, n))
    items = []
    for i in chosen:
        _check_image(data, i)
        item_id, question, answer = texts[i]
        items.append(VQAItem(item_id, question, answer, data.image(i)))
    return items
