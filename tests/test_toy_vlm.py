"""The toy VLM world: deterministic data, disjoint splits, folders the VQA loader reads, training,
the shipped models (loaded through the VLM adapter) each better at its own skill, demo_vlm."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from evomm.runner import run
import evomm.toy.vlm_builtins  # noqa: F401 - registers builtin:toy-vlm-*
from evomm.adapters import build_adapter
from evomm.adapters.apply import show_source
from evomm.data.vqa import load_vqa
from evomm.errors import ConfigError
from evomm.toy import vlm_world as world
from toytrain.vlm import (
    ALPHABET,
    IMAGE_TOKEN,
    SPECIAL_TOKENS,
    Stage,
    build_processor,
    build_tokenizer,
    train_all,
)
from evomm.tasks import build_task

from conftest import compose


# --- scenes and images ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits():
    return world.scene_splits()


def test_scene_splits_are_disjoint_and_hold_every_combination(splits):
    sets = {name: set(scenes) for name, scenes in splits.items()}
    assert all(len(sets[n]) == len(splits[n]) for n in sets)  # no scene twice within a split
    assert not sets["train"] & sets["fitness"] and not sets["train"] & sets["heldout"]
    assert not sets["fitness"] & sets["heldout"]
    assert sets["train"] | sets["fitness"] | sets["heldout"] == set(world.all_scenes())
    combos = {(s.en, c.en) for s in world.SHAPES for c in world.COLOURS}
    for scenes in splits.values():
        assert {sc.combo for sc in scenes} == combos
    assert len(splits["fitness"]) == world.FITNESS_PER_COMBO * len(combos)
    assert len(splits["heldout"]) == world.HELDOUT_PER_COMBO * len(combos)


def test_no_image_is_shared_between_splits(splits):
    pixels = {name: [sc.image().tobytes() for sc in scenes] for name, scenes in splits.items()}
    everything = [p for ps in pixels.values() for p in ps]
    assert len(set(everything)) == len(everything)


def test_images_show_their_scene(splits):
    for scene in splits["fitness"]:
        image = scene.image()
        assert image.size == (world.SIZE, world.SIZE)
        assert image.getpixel((0, 0)) == world.BACKGROUND  # the margin keeps corners clear
        # the point half-way between centre and base lies inside every shape
        assert image.getpixel((scene.cx, scene.cy + scene.r // 2)) == scene.colour.rgb
        area = sum(1 for px in image.getdata() if px == scene.colour.rgb)
        side = 2 * scene.r + 1
        expected = {"square": side**2, "circle": math.pi * scene.r**2, "triangle": side**2 / 2}[scene.shape.en]
        assert abs(area - expected) < 0.2 * expected, (scene, area, expected)


def test_scenes_and_questions_are_deterministic_and_seeded():
    assert world.scene_splits(0) == world.scene_splits(0)
    assert world.scene_splits(0)["fitness"] != world.scene_splits(1)["fitness"]
    questions = world.vqa_questions("fitness", "en")
    assert questions == world.vqa_questions("fitness", "en")
    kinds = [q.kind for q in questions]
    assert kinds.count("colour") == kinds.count("shape")
    with pytest.raises(ValueError, match="fitness, heldout"):
        world.vqa_questions("train", "en")


# --- Japanese text Q/A ------------------------------------------------------------------------


def test_japanese_qa_halves_are_disjoint_and_answer_in_japanese():
    fit, held = world.ja_qa_split("fitness"), world.ja_qa_split("heldout")
    assert fit and held and abs(len(fit) - len(held)) <= 1
    assert not {r["question"] for r in fit} & {r["question"] for r in held}
    ja_of = {c.en: c.ja for c in world.COLOURS} | {s.en: s.ja for s in world.SHAPES}
    expected = {f"{ja} は 何色 ですか?": ja_of[c] for _, ja, c in world.COLOUR_FACTS}
    expected |= {f"{ja} は どんな 形 ですか?": ja_of[s] for _, ja, s in world.SHAPE_FACTS}
    assert {r["question"]: r["answer"] for r in fit + held} == expected


def test_no_training_text_pairs_the_image_questions_with_an_answer():
    image_questions = [world.question(k, lang) for k in world.QUESTION_KINDS for lang in ("en", "ja")]
    # only the bilingual glossary may hold them, as a translation pair without an answer
    glossary = {f"en: {world.question(k, 'en')} ja: {world.question(k, 'ja')}" for k in world.QUESTION_KINDS}
    for name in world.CORPORA:
        for line in world.corpus(name):
            if any(q in line for q in image_questions):
                assert name == "bilingual" and line in glossary, (name, line)


# --- folders ----------------------------------------------------------------------------------


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world_folder(tmp_path_factory):
    return world.write_world(tmp_path_factory.mktemp("world") / "w")


def test_written_world_is_deterministic(world_folder, tmp_path):
    again = world.write_world(tmp_path / "again")
    assert _tree_digest(again) == _tree_digest(world_folder)
    assert {p.name for p in world_folder.iterdir()} == set(world.FOLDERS)


def test_folders_are_read_by_the_vqa_loader(world_folder):
    for split, stem in world.FILES.items():
        en = load_vqa(str(world_folder / "en_vqa"), stem, "ja_vg_vqa")
        ja = load_vqa(str(world_folder / "ja_vqa"), stem, "ja_vg_vqa")
        qs_en, qs_ja = world.vqa_questions(split, "en"), world.vqa_questions(split, "ja")
        assert [(it.question, it.answer) for it in en] == [(q.question, q.answer) for q in qs_en]
        assert [(it.question, it.answer) for it in ja] == [(q.question, q.answer) for q in qs_ja]
        for it_en, it_ja, q in zip(en, ja, qs_en):  # the target asks about the same images
            assert it_en.load_image().tobytes() == it_ja.load_image().tobytes() == q.scene.image().tobytes()
    ids = [{it.id for it in load_vqa(str(world_folder / "en_vqa"), stem, "ja_vg_vqa")} for stem in ("train", "test")]
    assert not ids[0] & ids[1]
    build_task("ja_vg_vqa", dataset=str(world_folder / "ja_vqa"), prompt=world.JA_VQA_PROMPT).validate()


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_covers_every_world_string_one_token_per_character():
    tok = build_tokenizer()
    assert len(tok) == len(SPECIAL_TOKENS) + len(ALPHABET)
    texts = [line for name in world.CORPORA for line in world.corpus(name)]
    for split in ("fitness", "heldout"):
        texts += [world.JA_QA_PROMPT.format(**r) + " " + r["answer"] for r in world.ja_qa_split(split)]
        for lang in ("en", "ja"):
            texts += [q.question + " " + q.answer for q in world.vqa_questions(split, lang)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) == len(text), text
        assert tok.decode(ids) == text
    processor = build_processor()
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == len(tok)
    prompt = world.EN_VQA_PROMPT.format(image=IMAGE_TOKEN, question=world.EN_COLOUR_QUESTION)
    image = world.all_scenes()[0].image()
    ids = processor(images=image, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(len(tok)) == (32 // 8) ** 2  # <image> expanded into one position per patch


# --- training ---------------------------------------------------------------------------------


TINY_STAGES = (
    Stage("base", "text", mix={"english_qa": 1, "japanese_text": 1}, steps=2, lr=1e-3, batch_size=4),
    Stage("ja", "text", parent="base", mix={"japanese_qa": 1}, steps=2, lr=1e-3, batch_size=4, seed=1),
    Stage("vision", "vision", steps=2, lr=1e-3, batch_size=4, seed=3),
    Stage("llava", "vqa", parent="base", vision="vision", steps=2, lr=1e-3, batch_size=4, seed=2),
)


def test_training_is_deterministic_and_the_vlm_grows_from_base_and_tower(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    first = train_all(tmp_path / "a", TINY_STAGES)
    second = train_all(tmp_path / "b", TINY_STAGES)
    for name in ("base", "ja", "vision", "llava"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    base, ja = first["base"].state_dict(), first["ja"].state_dict()
    assert any(not torch.equal(base[k], ja[k]) for k in base)
    llava = first["llava"]
    # the tower is the vision stage's (frozen while the VLM trains); the LM moved away from base
    tower = first["vision"].tower.state_dict()
    assert all(torch.equal(v, llava.model.vision_tower.state_dict()[k]) for k, v in tower.items())
    lm = llava.get_decoder().state_dict()
    assert not torch.equal(lm["layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert lm["embed_tokens.weight"].shape[0] == base["model.embed_tokens.weight"].shape[0] + 1
    # saved as standard checkpoints; the vision stage is not saved on its own
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["base", "ja", "llava"]
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "a" / "llava")
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    assert AutoProcessor.from_pretrained(tmp_path / "a" / "llava").tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) \
        == loaded.config.image_token_id


# --- the shipped models -----------------------------------------------------------------------


def test_shipped_models_are_small():
    models = Path(evomm.toy.vlm_builtins.__file__).parent / "models"
    total = sum(p.stat().st_size for p in models.rglob("*") if p.is_file())
    assert total < 20 * 2**20
    for name in ("base", "ja", "llava"):
        assert (models / "vlm" / name / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def adapter():
    return build_adapter("vlm", models=["builtin:toy-vlm-llava", "builtin:toy-vlm-ja"],
                         base="builtin:toy-vlm-base", device="cpu")


def test_each_shipped_model_is_better_at_its_own_skill(adapter):
    task = build_task("toy_vqa_skills", heldout_samples=24)
    task.validate()
    scores = []
    for index in (0, 1):  # the LLaVA's language model, then the Japanese LM, in the LLaVA
        show_source(adapter, index)
        scores.append(task.evaluate(adapter.handle(), "heldout"))
    llava, ja = scores
    assert llava["english_vqa"] > ja["english_vqa"]
    assert ja["japanese_qa"] > llava["japanese_qa"]
    for m in scores:
        assert m["fitness"] == pytest.approx((m["english_vqa"] + m["japanese_qa"]) / 2)
    assert task.evaluate(adapter.handle(), "heldout") == ja  # deterministic


def test_target_task_asks_the_images_in_japanese():
    task = build_task("toy_ja_vqa", heldout_samples=5)
    task.validate()
    items = task.items("test")
    assert len(items) == 5 and all(it.question in (world.JA_COLOUR_QUESTION, world.JA_SHAPE_QUESTION) for it in items)


def test_target_counts_right_answers_given_in_english(adapter):
    show_source(adapter, 0)  # the LLaVA's own language model: it answers in English
    task = build_task("toy_ja_vqa")
    metrics = task.evaluate(adapter.handle(), "test")
    english = [q.answer for q in world.vqa_questions("heldout", "en")]  # the same images, in order
    predictions = [r["prediction"] for r in task.scoring.last_records]
    assert len(predictions) == len(english)
    expected = sum(p.strip().lower() == e for p, e in zip(predictions, english)) / len(english)
    assert metrics["right_in_english"] == pytest.approx(expected)
    assert 0.0 <= metrics["rouge_l"] <= 1.0


def test_bad_options_and_missing_data_raise(tmp_path):
    with pytest.raises(ConfigError, match="fitness_samples"):
        build_task("toy_vqa_skills", fitness_samples=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        build_task("toy_vqa_skills", max_new_tokens=0)
    for name in ("toy_vqa_skills", "toy_ja_vqa"):
        with pytest.raises(ConfigError, match=f"{name}: data_dir must be a folder path or null"):
            build_task(name, data_dir="")
    with pytest.raises(ConfigError, match="splits 'fitness' and 'heldout'"):
        build_task("toy_vqa_skills").qa_items("test")
    with pytest.raises(ConfigError, match="write_world"):
        build_task("toy_vqa_skills", data_dir=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="write_world"):
        build_task("toy_ja_vqa", data_dir=str(tmp_path)).validate()
    folder = world.write_world(tmp_path / "broken")
    (folder / "ja_qa" / "train.jsonl").write_text('{"question": "q"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1: expected a record with question and answer"):
        build_task("toy_vqa_skills", data_dir=str(folder)).qa_items("fitness")
    (folder / "ja_qa" / "train.jsonl").write_text('{"question": "q", "answer": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2: not valid JSON"):
        build_task("toy_vqa_skills", data_dir=str(folder)).qa_items("fitness")


def test_demo_vlm_runs_end_to_end(tmp_path):
    out = run(compose([
        "experiment=demo_vlm", f"run_dir={tmp_path / 'run'}", "logger=none",
        "optimizer.popsize=2", "optimizer.generations=1", "~final_eval.baselines", "save_merged=false",
    ]))
    rows = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["evolved", "source", "source", "source"]
    for r in rows:  # both skills and the Japanese-VQA target, for every model
        m = r["metrics"]
        assert m["fitness"] == pytest.approx((m["english_vqa"] + m["japanese_qa"]) / 2)
        assert 0.0 <= m["toy_ja_vqa/rouge_l"] <= 1.0
