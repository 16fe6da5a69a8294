"""Tiny VQA data, local-folder loading, and the ja_vg_vqa / ja_vlm_bench tasks on tiny VLMs."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

from evomm.adapters.base import VLMHandle
from evomm.data.vqa import load_vqa, resolve_dataset
from evomm.errors import ConfigError
from evomm.text.rouge_ja import normalize
from evomm.toy import tiny_vlm
from evomm.toy.tiny_vqa import COLOUR_QUESTION, COLOURS, SHAPE_QUESTION, SHAPES, write_tiny_vqa
from evomm.tasks import build_task

FAST = dict(max_new_tokens=6, num_beams=1, repetition_penalty=1.0)  # cheap generation for tests


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_vqa(tmp_path_factory.mktemp("tiny_vqa"), n_train=10, n_test=6, seed=0)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_tiny_vqa(tmp_path_factory.mktemp("tiny_bench"), n_test=5, seed=1, kind="ja_vlm_bench")


def _handle(build, tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tmp_path_factory.mktemp("vlm")
    build(path)
    return VLMHandle(AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return _handle(tiny_vlm.build_tiny_llava, tmp_path_factory)


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- tiny data ------------------------------------------------------------------------------------


def test_tiny_vqa_files_and_pictures(data):
    train, test = _records(data / "train.jsonl"), _records(data / "test.jsonl")
    assert (len(train), len(test)) == (10, 6)
    palette = dict(COLOURS)
    ids = [r["image_id"] for r in train + test]
    assert len(set(ids)) == len(ids)  # splits share no image
    for rec in train + test:
        assert set(rec) == {"image_id", "url", "width", "height", "image", "qas"}
        (colour_qa, shape_qa) = rec["qas"]
        assert colour_qa["question"] == COLOUR_QUESTION and colour_qa["answer"] in palette
        assert shape_qa["question"] == SHAPE_QUESTION and shape_qa["answer"] in SHAPES
        image = Image.open(data / rec["image"]).convert("RGB")
        assert image.size == (32, 32) == (rec["width"], rec["height"])
        colours = set(image.getdata())
        # the shape is drawn in the answer's colour, and no other palette colour appears
        assert palette[colour_qa["answer"]] in colours
        assert not (colours & set(palette.values())) - {palette[colour_qa["answer"]]}


def test_tiny_vqa_is_seeded(tmp_path):
    a = write_tiny_vqa(tmp_path / "a", n_train=4, n_test=2, seed=3)
    b = write_tiny_vqa(tmp_path / "b", n_train=4, n_test=2, seed=3)
    assert (a / "train.jsonl").read_text() == (b / "train.jsonl").read_text()
    assert (a / "images" / "train_0001.png").read_bytes() == (b / "images" / "train_0001.png").read_bytes()


# -- loading --------------------------------------------------------------------------------------


def test_load_jsonl_first_qa_per_image(data):
    items = load_vqa(str(data), "train", "ja_vg_vqa")
    records = _records(data / "train.jsonl")
    assert [(it.id, it.question, it.answer) for it in items] == [
        (str(r["image_id"]), r["qas"][0]["question"], r["qas"][0]["answer"]) for r in records
    ]
    assert items[0].load_image().size == (32, 32)
    some = load_vqa(str(data), "train", "ja_vg_vqa", n=4, seed=7)
    assert len(some) == 4 and set(it.id for it in some) <= set(it.id for it in items)
    assert [it.id for it in some] == [it.id for it in load_vqa(str(data), "train", "ja_vg_vqa", n=4, seed=7)]
    assert [it.id for it in some] == sorted((it.id for it in some), key=int)  # data order kept


def _as_dataset(folder, split, layout_fields):
    from datasets import Dataset, Image as ImageFeature

    rows = _records(folder / f"{split}.jsonl")
    columns = {k: [r[k] for r in rows] for k in layout_fields}
    columns["image"] = [str(folder / r["image"]) for r in rows]
    return Dataset.from_dict(columns).cast_column("image", ImageFeature())


def test_datasets_folders_match_jsonl(data, tmp_path):
    from datasets import DatasetDict

    fields = ["image_id", "url", "width", "height", "qas"]
    dd = DatasetDict({s: _as_dataset(data, s, fields) for s in ("train", "test")})
    dd.save_to_disk(str(tmp_path / "dd"))
    dd["test"].save_to_disk(str(tmp_path / "per_split" / "test"))
    # a local copy of a hub dataset repository: parquet files named by split
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dd["test"].to_parquet(str(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet"))
    want = load_vqa(str(data), "test", "ja_vg_vqa")
    for folder in (tmp_path / "dd", tmp_path / "per_split", tmp_path / "repo"):
        got = load_vqa(str(folder), "test", "ja_vg_vqa")
        assert [(it.id, it.question, it.answer) for it in got] == [(it.id, it.question, it.answer) for it in want]
        assert list(got[2].load_image().getdata()) == list(want[2].load_image().getdata())
    with pytest.raises(ConfigError, match="splits"):
        load_vqa(str(tmp_path / "dd"), "validation", "ja_vg_vqa")


def test_bench_layout(bench):
    items = load_vqa(str(bench), "test", "ja_vlm_bench")
    records = _records(bench / "test.jsonl")
    assert set(records[0]) == {"page_url", "image_url", "image", "question", "answer"}
    assert [(it.question, it.answer) for it in items] == [(r["question"], r["answer"]) for r in records]


def _write_jsonl(folder, split, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8"
    )


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"qas": None}, r"line 2: missing field 'qas'"),
        ({"image_id": None}, r"line 2: missing field 'image_id'"),
        ({"qas": []}, r"line 2: field 'qas' must be a non-empty list"),
        ({"qas": [{"question": "何?"}]}, r"line 2, qas\[0\]: missing field 'answer'"),
        ({"image": "images/nowhere.png"}, r"line 2: image file .*nowhere.png does not exist"),
    ],
)
def test_missing_fields_name_field_and_record(data, tmp_path, broken, message):
    records = _records(data / "train.jsonl")[:3]
    for key, value in broken.items():
        if value is None:
            del records[1][key]
        else:
            records[1][key] = value
    folder = tmp_path / "broken"
    shutil.copytree(data / "images", folder / "images")
    _write_jsonl(folder, "train", records)
    with pytest.raises(ConfigError, match=message):
        load_vqa(str(folder), "train", "ja_vg_vqa")


def test_dataset_reference_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_vqa(str(tmp_path / "missing"), "train", "ja_vg_vqa")
    with pytest.raises(ConfigError, match="no validation.jsonl"):
        load_vqa(str(data), "validation", "ja_vg_vqa")
    with pytest.raises(ConfigError, match="line 1: missing field 'question'"):
        load_vqa(str(data), "test", "ja_vlm_bench")  # a VG folder read as the bench layout
    with pytest.raises(ConfigError, match="known: builtin:tiny-vlm-bench, builtin:tiny-vqa"):
        resolve_dataset("builtin:nothing")


def test_builtin_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMM_HOME", str(tmp_path / "home"))
    path = resolve_dataset("builtin:tiny-vqa")
    assert path == str(tmp_path / "home" / "data" / "tiny-vqa")
    assert len(load_vqa("builtin:tiny-vqa", "train", "ja_vg_vqa")) == 16
    assert resolve_dataset("builtin:tiny-vqa") == path  # built once, then reused
    assert len(load_vqa("builtin:tiny-vlm-bench", "test", "ja_vlm_bench")) == 8


# -- tasks ----------------------------------------------------------------------------------------


def test_ja_vg_vqa_evaluates_tiny_llava(data, llava):
    task = build_task("ja_vg_vqa", dataset=str(data), fitness_samples=4, batch_size=4, **FAST)
    task.validate()
    result = task.evaluate(llava, "train")
    assert set(result) == {"fitness", "rouge_l", "exact_match", "japanese_rate", "n", "item_scores"}
    assert 0.0 <= result["fitness"] <= 1.0 and result["fitness"] == result["rouge_l"]
    assert result["n"] == 4
    # batching with left padding gives the same answers as one item at a time
    batched = [r["prediction"] for r in task.scoring.last_records]
    single = build_task("ja_vg_vqa", dataset=str(data), fitness_samples=4, batch_size=1, **FAST)
    single.evaluate(llava, "train")
    assert [r["prediction"] for r in single.scoring.last_records] == batched
    assert all(r["question"] == COLOUR_QUESTION for r in task.scoring.last_records)


def test_fitness_is_one_when_references_are_the_models_answers(data, llava, tmp_path):
    """Generation, decoding and scoring connect: a model that says exactly the reference scores 1."""
    task = build_task("ja_vg_vqa", dataset=str(data), heldout_samples=None, batch_size=3, **FAST)
    task.evaluate(llava, "test")
    predictions = {r["id"]: r["prediction"] for r in task.scoring.last_records}
    records = _records(data / "test.jsonl")
    for rec in records:
        rec["qas"][0]["answer"] = predictions[str(rec["image_id"])]
    folder = tmp_path / "echo"
    shutil.copytree(data / "images", folder / "images")
    _write_jsonl(folder, "test", records)
    echo = build_task("ja_vg_vqa", dataset=str(folder), batch_size=3, **FAST)
    result = echo.evaluate(llava, "test")
    scorable = [bool(normalize(p)) for p in predictions.values()]  # an empty answer scores 0
    assert result["fitness"] == pytest.approx(sum(scorable) / len(scorable))
    assert result["exact_match"] == 1.0


def test_fitness_generation_overrides(data, llava):
    task = build_task(
        "ja_vg_vqa", dataset=str(data), fitness_samples=3, heldout_samples=3, batch_size=3,
        max_new_tokens=5, num_beams=2, repetition_penalty=1.5, fitness_max_new_tokens=1,
        fitness_num_beams=1, fitness_repetition_penalty=1.0,
    )
    task.evaluate(llava, "train")  # one character-token at most
    assert all(len(r["prediction"]) <= 1 for r in task.scoring.last_records)
    result = task.evaluate(llava, "test")  # beam search 2 with repetition penalty
    assert 0.0 <= result["fitness"] <= 1.0
    assert any(len(r["prediction"]) > 1 for r in task.scoring.last_records)


def test_prompt_option_and_checks(data, llava):
    task = build_task("ja_vg_vqa", dataset=str(data), fitness_samples=2, prompt="{system}|{image}\n{question} A:",
                      system_prompt="sys", **FAST)
    result = task.evaluate(llava, "train")
    assert 0.0 <= result["fitness"] <= 1.0
    with pytest.raises(ConfigError, match=r"\{image\}"):
        build_task("ja_vg_vqa", dataset=str(data), prompt="{question}")
    with pytest.raises(ConfigError, match="fitness_samples"):
        build_task("ja_vg_vqa", dataset=str(data), fitness_samples=0)
    with pytest.raises(ConfigError, match="num_beams"):
        build_task("ja_vg_vqa", dataset=str(data), num_beams=0)
    with pytest.raises(ConfigError, match="splits 'train'"):
        build_task("ja_vg_vqa", dataset=str(data)).items("validation")


def test_validate_refuses_shared_images(data, tmp_path):
    folder = tmp_path / "leaky"
    shutil.copytree(data, folder)
    shutil.copy(folder / "train.jsonl", folder / "test.jsonl")
    with pytest.raises(ConfigError, match="in both 'train' and 'test'"):
        build_task("ja_vg_vqa", dataset=str(folder)).validate()


def test_ja_vlm_bench_is_evaluation_only(bench, llava):
    task = build_task("ja_vlm_bench", dataset=str(bench), batch_size=2, **FAST)
    with pytest.raises(ConfigError, match="allow_heldout_fitness"):
        task.validate()
    task.validate(fitness=False)
    build_task("ja_vlm_bench", dataset=str(bench), allow_heldout_fitness=True).validate()
    result = task.evaluate(llava, "test")
    assert 0.0 <= result["fitness"] <= 1.0 and result["n"] == 5
    with pytest.raises(ConfigError, match="only the 'test' split"):
        task.evaluate(llava, "train")


def test_llava_next_generation(data, tmp_path_factory):
    handle = _handle(tiny_vlm.build_tiny_llava_next, tmp_path_factory)
    task = build_task("ja_vg_vqa", dataset=str(data), fitness_samples=3, batch_size=3, **FAST)
    result = task.evaluate(handle, "train")
    assert 0.0 <= result["fitness"] <= 1.0 and result["n"] == 3
