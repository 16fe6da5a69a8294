"""Tiny SDXL pipelines and a tiny open_clip model, built offline from configs.

``builtin:tiny-sdxl-a|b|c`` are diffusers ``StableDiffusionXLPipeline`` folders with the real SDXL
module structure at toy width (UNet ~0.7M parameters, 37 diffusers groups, 19 MBW blocks + BASE):
``a`` is a random initialisation, ``b`` and ``c`` are ``a`` plus small seeded perturbations of the
UNet and both text encoders (stand-ins for fine-tunes of one base, so merges are meaningful).
The VAE, tokenizers and scheduler are identical across the three.

``builtin:tiny-clip`` is a folder holding a tiny open_clip model: ``evomm-tiny-clip.json`` (its
open_clip config; the CLIP-score task registers it with ``open_clip.add_model_config``) and
``open_clip_model.safetensors`` (random weights). Its text tower uses open_clip's bundled
tokenizer, so it works offline.

Text encoder widths differ on purpose (12 vs 20): diffusers' single-file loader tells the two
SDXL text encoders apart by their position-embedding width, as the real ones (768 vs 1280) are.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from evomm.builtin import BUILDERS

TINY_UNET_CONFIG = dict(
    sample_size=16,  # latent side; the tiny VAE makes images 2x larger (32 x 32 by default)
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(8, 16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 3),
    attention_head_dim=(2, 4, 8),  # diffusers reads this as the head count (SDXL: 5, 10, 20)
    norm_num_groups=4,
    cross_attention_dim=32,  # = text_encoder hidden (12) + text_encoder_2 hidden (20)
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,  # = text_encoder_2 projection (32) + 6 size ids x 8
)

TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),  # two levels: latents are images / 2
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
    scaling_factor=0.13025,  # SDXL's
    force_upcast=False,
)

# (hidden, projection) of the two text encoders; layers / heads / MLP kept minimal.
_TE_SHAPES = {"text_encoder": (12, None), "text_encoder_2": (20, 32)}

TINY_CLIP_NAME = "evomm-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CLIP_WEIGHTS = "open_clip_model.safetensors"

_PERTURBATIONS = {"tiny-sdxl-a": (0, 0.0), "tiny-sdxl-b": (1, 0.02), "tiny-sdxl-c": (2, 0.02)}


# ----------------------------------------------------------------------------- tokenizer


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for raw bytes."""
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)
    ]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


# A few merges so the vocabulary is a real BPE and common English words become single tokens.
_MERGES = [
    ("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "f</w>"), ("i", "n"),
    ("in", "g</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"),
]


def tiny_clip_tokenizer():
    """A CLIPTokenizer over all 256 bytes (+ end-of-word forms) and a dozen merges.

    Every UTF-8 string tokenizes without unknowns: ASCII letters are single symbols and a
    Japanese character becomes its three UTF-8 byte symbols.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for s in _byte_symbols():
        vocab[s] = len(vocab)
    for s in _byte_symbols():
        vocab[s + "</w>"] = len(vocab)
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=77)


# ------------------------------------------------------------------------------ pipeline


def _text_encoders(tokenizer, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(hidden: int, projection: int | None) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=projection or hidden,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    torch.manual_seed(seed + 1000)
    te1 = CLIPTextModel(config(*_TE_SHAPES["text_encoder"]))
    te2 = CLIPTextModelWithProjection(config(*_TE_SHAPES["text_encoder_2"]))
    return te1.eval(), te2.eval()


def build_tiny_sdxl_pipeline(seed: int = 0, perturb_seed: int | None = None, perturb_scale: float = 0.0):
    """An in-memory tiny StableDiffusionXLPipeline (float32, CPU).

    ``seed`` fixes the base weights; ``perturb_seed``/``perturb_scale`` add N(0, scale^2) noise to
    every UNet and text-encoder parameter, making a "fine-tune" of the seed's model.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        torch.manual_seed(seed + 500)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        te1, te2 = _text_encoders(tokenizer, seed)
    # SDXL-base's scheduler settings
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    if perturb_scale:
        g = torch.Generator().manual_seed(int(perturb_seed or 0))
        with torch.no_grad():
            for module in (unet, te1, te2):
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * perturb_scale)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl(
    out_dir: Path, seed: int = 0, perturb_seed: int | None = None, perturb_scale: float = 0.0
) -> None:
    """Write a tiny SDXL pipeline folder (diffusers format, safetensors) to ``out_dir``."""
    pipe = build_tiny_sdxl_pipeline(seed, perturb_seed, perturb_scale)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)


def _register(name: str) -> None:
    perturb_seed, scale = _PERTURBATIONS[name]

    def build(out_dir: Path) -> None:
        build_tiny_sdxl(out_dir, seed=0, perturb_seed=perturb_seed, perturb_scale=scale)

    build.__doc__ = f"builtin:{name}: tiny SDXL pipeline (perturbation seed {perturb_seed}, scale {scale})."
    BUILDERS.add(name, build)


for _name in _PERTURBATIONS:
    _register(_name)


# ----------------------------------------------------------------------------- open_clip


def register_tiny_clip_config() -> str:
    """Make ``evomm-tiny-clip`` known to open_clip (idempotent); returns the model name."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="evomm-open-clip-"))
        path = folder / f"{TINY_CLIP_NAME}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP_NAME


@BUILDERS.register("tiny-clip")
def build_tiny_clip(out_dir: Path, seed: int = 0) -> None:
    """Write ``evomm-tiny-clip.json`` and random ``open_clip_model.safetensors`` to ``out_dir``."""
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    register_tiny_clip_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / TINY_CLIP_WEIGHTS))
