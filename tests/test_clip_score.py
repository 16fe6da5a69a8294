"""CLIP-score task on a tiny open_clip model (builtin:tiny-clip) and a tiny SDXL pipeline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from evomm.adapters.base import SDXLHandle
from evomm.errors import ConfigError
from evomm.text.japanese import is_japanese
from evomm.tasks import build_task
from evomm.tasks.clip_score import DEFAULT_PROMPTS, clip_scores, read_prompts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Folder of builtin:tiny-clip: evomm-tiny-clip.json + open_clip_model.safetensors."""
    from evomm.builtin import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOMM_HOME", str(tmp_path_factory.mktemp("clip_home")))
        return Path(resolve("builtin:tiny-clip"))


@pytest.fixture(scope="module")
def handle():
    from evomm.toy.tiny_sdxl import build_tiny_sdxl_pipeline

    return SDXLHandle(build_tiny_sdxl_pipeline(seed=0))


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    lines = ["# a comment", "赤いりんご", "", "青い海と空", "白い猫", "緑の森", "黒い犬", "黄色い花",
             "夜の街"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_task(tiny_clip, prompts_file, **options):
    defaults = dict(
        model_name="evomm-tiny-clip",
        pretrained=str(tiny_clip),
        prompts_file=str(prompts_file),
        fitness_samples=2,
        heldout_samples=2,
        steps=2,
        height=32,
        width=32,
        batch_size=2,
        seed=5,
    )
    return build_task("clip_score", **{**defaults, **options})


def test_clip_scores_clamp_each_image():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    txt = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    scores = clip_scores(img, txt)  # cosines 1, -1, 1
    torch.testing.assert_close(scores, torch.tensor([100.0, 0.0, 100.0]))
    # clamping the mean instead (torchmetrics) would give 100 * max((1 - 1 + 1) / 3, 0) = 33.3
    assert scores.mean().item() == pytest.approx(200 / 3)


def test_split_rule(tiny_clip, prompts_file):
    task = make_task(tiny_clip, prompts_file, fitness_samples=None, heldout_samples=None)
    lines = read_prompts(prompts_file)
    assert lines[0] == "赤いりんご" and len(lines) == 7  # blank and comment lines skipped
    fit, fit_seeds = task.split("fitness")
    held, held_seeds = task.split("heldout")
    assert fit == lines[0::2] and held == lines[1::2]
    assert fit_seeds == [5 + i for i in range(0, 7, 2)] and held_seeds == [5 + i for i in range(1, 7, 2)]
    assert not set(fit) & set(held)
    small = make_task(tiny_clip, prompts_file, fitness_samples=2, heldout_samples=1)
    assert small.split("fitness") == (fit[:2], fit_seeds[:2])
    assert small.split("heldout") == (held[:1], held_seeds[:1])
    with pytest.raises(ConfigError, match="splits"):
        small.split("test")


def test_default_prompts():
    prompts = read_prompts(DEFAULT_PROMPTS)
    assert len(prompts) >= 60 and len(set(prompts)) == len(prompts)
    assert all(is_japanese(p) for p in prompts)
    task = build_task("clip_score")  # the paper-scale defaults validate without any download
    task.validate()
    fit, held = task.split("fitness")[0], task.split("heldout")[0]
    assert len(fit) + len(held) == len(prompts) and not set(fit) & set(held)
    assert (task.steps, task.guidance_scale) == (4, 0.0)


def test_validate_errors(tiny_clip, prompts_file, tmp_path):
    make_task(tiny_clip, prompts_file).validate()
    with pytest.raises(ConfigError, match="fitness_samples"):
        make_task(tiny_clip, prompts_file, fitness_samples=5).validate()  # only 4 fitness prompts
    with pytest.raises(ConfigError, match="prompts_file"):
        make_task(tiny_clip, tmp_path / "nope.txt").validate()
    with pytest.raises(ConfigError, match="model_name"):
        make_task(tiny_clip, prompts_file, model_name="no-such-clip").validate()
    with pytest.raises(ConfigError, match="pretrained"):
        build_task("clip_score", pretrained="no_such_tag").validate()
    dup = tmp_path / "dup.txt"
    dup.write_text("同じ\n同じ\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="both splits"):
        make_task(tiny_clip, dup, fitness_samples=None, heldout_samples=None).validate()


def test_evaluate_matches_direct_clip_computation(tiny_clip, prompts_file, handle):
    import open_clip

    task = make_task(tiny_clip, prompts_file, fitness_samples=3, batch_size=1)
    result = task.evaluate(handle, "fitness")
    assert set(result) == {"fitness", "clip_score", "clip_score_std", "n", "item_scores"}
    assert result["n"] == 3 and result["fitness"] == result["clip_score"]

    # the same numbers computed directly: prompt i of the file rendered with seed 5 + i
    lines = read_prompts(prompts_file)
    prompts, seeds = [lines[0], lines[2], lines[4]], [5, 7, 9]
    model, _, preprocess = open_clip.create_model_and_transforms(
        "evomm-tiny-clip", pretrained=str(tiny_clip / "open_clip_model.safetensors")
    )
    tokenizer = open_clip.get_tokenizer("evomm-tiny-clip")
    scores = []
    with torch.no_grad():
        for prompt, seed in zip(prompts, seeds):
            image = handle.pipeline(prompt, num_inference_steps=2, guidance_scale=0.0, height=32, width=32,
                                    generator=torch.Generator().manual_seed(seed)).images[0]
            e_img = model.encode_image(preprocess(image).unsqueeze(0))
            e_txt = model.encode_text(tokenizer([prompt]))
            e_img, e_txt = e_img / e_img.norm(dim=-1, keepdim=True), e_txt / e_txt.norm(dim=-1, keepdim=True)
            scores.append(100 * max((e_img * e_txt).sum().item(), 0.0))
    expected = torch.tensor(scores)
    assert any(s > 0 for s in scores) and any(s == 0 for s in scores)  # both sides of the clamp
    assert result["clip_score"] == pytest.approx(expected.mean().item(), rel=1e-5, abs=1e-6)
    assert result["clip_score_std"] == pytest.approx(expected.std(correction=0).item(), rel=1e-4, abs=1e-6)
    # deterministic, and batching does not change which noise a prompt gets
    again = make_task(tiny_clip, prompts_file, fitness_samples=3, batch_size=2).evaluate(handle, "fitness")
    assert again["clip_score"] == pytest.approx(result["clip_score"], rel=1e-3, abs=1e-3)


def test_text_embeddings_are_computed_once_per_run(tiny_clip, prompts_file, handle):
    task = make_task(tiny_clip, prompts_file, fitness_samples=3, batch_size=2)
    first = task.evaluate(handle, "fitness")
    model = task._clip[0]
    calls = []
    original = model.encode_text

    def counting(tokens):
        calls.append(len(tokens))
        return original(tokens)

    model.encode_text = counting
    try:
        assert task.evaluate(handle, "fitness") == first  # a second candidate: cached embeddings
        assert calls == []
        task.evaluate(handle, "heldout")  # new prompts are embedded once each
        assert sum(calls) == 2
        prompts, _ = task.split("fitness")
        cached = task.text_features(prompts, torch.device("cpu"))
        fresh = original(task._clip[2](prompts))
        assert torch.allclose(cached, fresh, atol=1e-6)
    finally:
        model.encode_text = original


def test_heldout_uses_other_prompts(tiny_clip, prompts_file, handle):
    task = make_task(tiny_clip, prompts_file, heldout_samples=3)
    assert task.evaluate(handle, "heldout")["n"] == 3
    assert task.fitness_split == "fitness" and task.heldout_split == "heldout" and task.modality == "sdxl"


def test_save_images_grid(tiny_clip, prompts_file, handle, tmp_path):
    from PIL import Image

    task = make_task(tiny_clip, prompts_file, heldout_samples=3)
    path = task.save_images(handle, "heldout", tmp_path / "images")
    assert path.is_file() and path.suffix == ".png"
    assert Image.open(path).size == (2 * 32, 2 * 32)  # 3 images in a 2 x 2 grid
    listed = (path.parent / "clip_score_heldout_prompts.txt").read_text(encoding="utf-8").splitlines()
    assert listed == task.split("heldout")[0]


def test_tiny_clip_builtin_folder(tiny_clip):
    import json

    import open_clip

    from evomm.toy.tiny_sdxl import TINY_CLIP_CONFIG

    assert json.loads((tiny_clip / "evomm-tiny-clip.json").read_text()) == TINY_CLIP_CONFIG
    # strict load of the file into the registered config: every tensor present, right shapes
    model = open_clip.create_model("evomm-tiny-clip", pretrained=str(tiny_clip / "open_clip_model.safetensors"))
    assert model.visual.image_size == (32, 32)
