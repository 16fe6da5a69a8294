"""CLIP score of generated images on Japanese prompts (the EvoSDXL-JP fitness).

The paper did not publish EvoSDXL-JP's fitness; CLIP score with a Japanese-capable CLIP is the
natural choice. For each prompt the pipeline renders one image with a fixed seed, and

    score = 100 * max(cos(E_image, E_text), 0)     per image, then averaged over the prompts.

This clamps each image's cosine at 0 before averaging. torchmetrics' ``CLIPScore`` instead
averages the raw cosines and clamps the mean, so the two differ when some cosines are negative.

Prompts come from a text file, one per line (blank lines and lines starting with '#' skipped).
Fixed split rule: prompts at even positions (0, 2, 4, ...) form the fitness pool, odd positions
the held-out pool, so both pools cover the file's topics and are disjoint whatever the sample
counts; ``fitness_samples`` / ``heldout_samples`` take the first N of each pool (None: all;
with ``resample_fitness`` each generation draws its own N fitness prompts).
Prompt i (its position in the file) is always rendered with seed ``seed + i`` from a CPU
generator, so a prompt gets the same starting noise on every device and in every split size.

``model_name`` / ``pretrained`` are open_clip's: a model config name and a pretrained tag, or a
local weights file (.pt/.bin/.safetensors), or a folder holding one. A custom config may sit
beside the weights as ``<model_name>.json``; it is registered with ``open_clip.add_model_config``
(that is how the offline tiny model of ``builtin:tiny-clip`` works).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evomm.builtin import resolve
from evomm.errors import ConfigError
from evomm.tasks.base import Resampling, pick

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "ja_prompts.txt"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_PREFERRED_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP scores: 100 * max(cos, 0) for rows (n, d) x (n, d) -> (n,)."""
    cos = (F.normalize(image_features.float(), dim=-1) * F.normalize(text_features.float(), dim=-1)).sum(-1)
    return 100.0 * cos.clamp(min=0.0)


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a prompts file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def image_grid(images: list, columns: int | None = None):
    """Paste equally sized PIL images into one grid image (row-major)."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    return grid


class ClipScoreTask(Resampling):
    """Render fixed-seed images for Japanese prompts and score them with an open_clip model."""

    name = "clip_score"
    modality = "sdxl"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(
        self,
        model_name: str = "xlm-roberta-base-ViT-B-32",
        pretrained: str = "laion5b_s13b_b90k",
        prompts_file: str | None = None,
        fitness_samples: int | None = None,
        heldout_samples: int | None = None,
        seed: int = 0,
        steps: int = 4,
        guidance_scale: float = 0.0,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 4,
        device: str = "auto",
    ):
        self.model_name = model_name
        self.pretrained = pretrained
        self.prompts_file = Path(prompts_file) if prompts_file else DEFAULT_PROMPTS
        self.fitness_samples = fitness_samples
        self.heldout_samples = heldout_samples
        self.seed = int(seed)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.height = height
        self.width = width
        self.batch_size = int(batch_size)
        self.device = device
        self._clip: tuple[Any, Any, Any] | None = None  # (model, preprocess, tokenizer)
        self._clip_device: torch.device | None = None
        # The CLIP model is never merged, so a prompt's text embedding is the same for every
        # candidate: computed once per run (per loaded CLIP model).
        self._text_features: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------------------- data

    def split(self, split: str) -> tuple[list[str], list[int]]:
        """(prompts, seeds) of a split, in file order."""
        if split not in (self.fitness_split, self.heldout_split):
            raise ConfigError(
                f"clip_score has splits '{self.fitness_split}' and '{self.heldout_split}', not '{split}'"
            )
        prompts = read_prompts(self.prompts_file)
        first = 0 if split == self.fitness_split else 1
        limit = self.fitness_samples if split == self.fitness_split else self.heldout_samples
        indices = list(range(first, len(prompts), 2))
        if limit is not None and limit < len(indices):
            if split == self.fitness_split and self.sample_round > 0:  # a redrawn fitness sample
                indices = sorted(random.Random(self.sample_seed(split)).sample(indices, limit))
            else:
                indices = indices[:limit]  # the first prompts of the pool
        return [prompts[i] for i in indices], [self.seed + i for i in indices]

    def validate(self) -> None:
        if not self.prompts_file.is_file():
            raise ConfigError(
                f"task.prompts_file '{self.prompts_file}' does not exist; give a UTF-8 file, one prompt per line"
            )
        prompts = read_prompts(self.prompts_file)
        pools = {self.fitness_split: len(prompts[0::2]), self.heldout_split: len(prompts[1::2])}
        wanted_samples = {self.fitness_split: self.fitness_samples, self.heldout_split: self.heldout_samples}
        for split, wanted in wanted_samples.items():
            if pools[split] == 0:
                raise ConfigError(f"'{self.prompts_file}' has no {split} prompts; it needs at least two prompts")
            if wanted is not None and not 1 <= int(wanted) <= pools[split]:
                raise ConfigError(
                    f"task.{split}_samples={wanted} but '{self.prompts_file}' has {pools[split]} {split} prompts "
                    "(even lines are fitness, odd lines held out); lower it or add prompts"
                )
        shared = set(self.split(self.fitness_split)[0]) & set(self.split(self.heldout_split)[0])
        if shared:
            raise ConfigError(f"prompts appear in both splits (duplicate lines?): {sorted(shared)[:3]}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("task.steps and task.batch_size must be at least 1")
        self._weights_and_config()  # model name and weights must be resolvable

    def _weights_and_config(self) -> str:
        """The ``pretrained`` argument for open_clip; registers a sidecar config if present."""
        import open_clip

        pretrained = resolve(self.pretrained) if self.pretrained else self.pretrained
        path = Path(pretrained) if pretrained else None
        if path is not None and path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
            preferred = [p for p in files if p.name in _PREFERRED_WEIGHTS]
            if not files:
                raise ConfigError(f"task.pretrained folder '{path}' holds no .safetensors/.pt/.bin weights")
            if len(files) > 1 and not preferred:
                raise ConfigError(f"task.pretrained folder '{path}' holds several weight files; name one")
            path = (preferred or files)[0]
        if path is not None and path.is_file():
            sidecar = path.parent / f"{self.model_name}.json"
            if self.model_name not in open_clip.list_models() and sidecar.is_file():
                open_clip.add_model_config(sidecar)
            pretrained = str(path)
        if self.model_name not in open_clip.list_models():
            raise ConfigError(
                f"task.model_name '{self.model_name}' is not an open_clip model; e.g. xlm-roberta-base-ViT-B-32, "
                "nllb-clip-base, or put '<model_name>.json' beside the weights file"
            )
        if pretrained and not (path is not None and path.is_file()):
            tags = open_clip.list_pretrained_tags_by_model(self.model_name)
            if pretrained not in tags:
                raise ConfigError(
                    f"task.pretrained '{pretrained}' is neither a file nor a tag of {self.model_name} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
        return pretrained

    # ---------------------------------------------------------------------------- model

    def _load_clip(self, device: torch.device):
        if self._clip is None or self._clip_device != device:
            import open_clip

            pretrained = self._weights_and_config()
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=pretrained, device=device
            )
            tokenizer = open_clip.get_tokenizer(self.model_name)
            self._clip = (model.eval(), preprocess, tokenizer)
            self._clip_device = device
            self._text_features = {}
        return self._clip

    def _device(self, handle) -> torch.device:
        return torch.device(handle.device if self.device == "auto" else self.device)

    # ---------------------------------------------------------------------------- steps

    @torch.no_grad()
    def render(self, handle, prompts: list[str], seeds: list[int]) -> list:
        """One PIL image per prompt, each from its own seeded CPU generator."""
        pipe = handle.pipeline
        images = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + self.batch_size]]
            out = pipe(
                prompt=batch,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                height=self.height,
                width=self.width,
                generator=generators,
                output_type="pil",
            )
            images.extend(out.images)
        return images

    @torch.no_grad()
    def score(self, images: list, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Per-image CLIP scores (n,) on the CPU."""
        model, preprocess, tokenizer = self._load_clip(device)
        texts = self.text_features(prompts, device)
        scores = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([preprocess(im) for im in images[start : start + self.batch_size]]).to(device)
            scores.append(clip_scores(model.encode_image(pixels), texts[start : start + self.batch_size]).cpu())
        return torch.cat(scores)

    @torch.no_grad()
    def text_features(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """CLIP text embeddings (n, d) of ``prompts``, each computed once per loaded CLIP model."""
        model, _, tokenizer = self._load_clip(device)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_features]
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            for prompt, row in zip(batch, model.encode_text(tokenizer(batch).to(device))):
                self._text_features[prompt] = row
        return torch.stack([self._text_features[p] for p in prompts])

    def num_items(self, split: str) -> int:
        return len(self.split(split)[0])

    def evaluate(self, handle, split: str, items: list[int] | None = None) -> dict:
        prompts, seeds = self.split(split)
        prompts, seeds = pick(prompts, items, self.name), pick(seeds, items, self.name)
        images = self.render(handle, prompts, seeds)
        scores = self.score(images, prompts, self._device(handle))
        mean = float(scores.mean())
        return {
            "fitness": mean,
            "clip_score": mean,
            "clip_score_std": float(scores.std(correction=0)),
            "n": float(len(scores)),
            "item_scores": [float(v) for v in scores],
        }

    def save_images(self, handle, split: str, out_dir: str | Path) -> Path:
        """Render ``split``'s prompts and save ``clip_score_<split>.png`` (a grid) in ``out_dir``.

        The prompts, row-major, go to ``clip_score_<split>_prompts.txt`` beside it.
        """
        prompts, seeds = self.split(split)
        images = self.render(handle, prompts, seeds)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"clip_score_{split}.png"
        image_grid(images).save(path)
        (out_dir / f"clip_score_{split}_prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        return path
