"""Tiny LLaVA-style VLMs and their text LLMs, built offline: the stand-ins for EvoVLM-JP's models.

Four built-in checkpoints (``builtin:<name>``), mirroring the paper's family tree, where the
VLM's language model and the Japanese LLM are both fine-tunes of one base (Mistral-7B-v0.1):

* ``tiny-text-base``   MistralForCausalLM, vocabulary V (the base for task vectors)
* ``tiny-text-llm``    the same architecture = base + its own small deltas ("the Japanese LLM")
* ``tiny-llava``       LlavaForConditionalGeneration: CLIP vision tower (32x32 images, 8x8
                       patches, 2 layers) + 2-layer MLP projector + a language model with the
                       SAME architecture = base + other deltas, and vocabulary V + 1 (the extra
                       row is the ``<image>`` token, as LLaVA adds one)
* ``tiny-llava-next``  LlavaNextForConditionalGeneration, the same in spirit (any-res grid
                       pinpoints of 32 and 64 pixels, an ``image_newline`` vector)

All weights are random (seeded): the models are real checkpoints for exercising loading, merging,
generation and saving, not trained models. Text goes through a character-level tokenizer
(``tokenizers`` WordLevel, one token per character) covering printable ASCII, hiragana, katakana,
the kanji of the tiny VQA data and of the Japanese system prompt; NFKC runs first, so full-width
"？" is "?". The LLaVA processors add ``<image>`` as token V and render chats in the format of
the paper's evaluation ("ja-shisa-vqa"): ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<image>\\n{question} [/INST]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomm.builtin import BUILDERS

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3
IMAGE_TOKEN = "<image>"  # id V in the VLM vocabulary (V = text vocabulary size)

IMAGE_SIZE = 32
PATCH_SIZE = 8
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
MAX_POSITIONS = 1024

# Chat template: system turn inside the first [INST] (Llama-2 style, as the paper's template).
# Message content may be a string or a list of {"type": "image"} / {"type": "text"} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ '[INST] <<SYS>>\\n' }}{%- for p in parts if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}{{ '\\n<</SYS>>\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if loop.first -%}{{ '[INST] ' }}{%- endif -%}"
    "{%- for p in parts -%}{%- if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- elif p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' }}{%- for p in parts if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}{{ '</s>' }}"
    "{%- if not loop.last -%}{{ '[INST] ' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def alphabet() -> str:
    """Every character of the tiny vocabulary, in id order (after the special tokens)."""
    from evomm.data.vqa import JA_SYSTEM_PROMPT
    from evomm.toy.tiny_vqa import texts

    ascii_printable = "".join(chr(c) for c in range(0x20, 0x7F)) + "\n"
    hiragana = "".join(chr(c) for c in range(0x3041, 0x3097))
    katakana = "".join(chr(c) for c in range(0x30A1, 0x30FB)) + "ー"
    marks = "。、「」・々"
    chars = ascii_printable + hiragana + katakana + marks
    extra = sorted({ch for text in [JA_SYSTEM_PROMPT, *texts()] for ch in text} - set(chars))
    # NFKC maps full-width ASCII ("？") onto ASCII, so those never reach the vocabulary.
    return chars + "".join(ch for ch in extra if not 0xFF01 <= ord(ch) <= 0xFF5E)


def build_tokenizer(with_image_token: bool):
    """Character-level fast tokenizer; ``with_image_token`` appends ``<image>`` as the last id."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet():
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    # One pre-token per character, newlines included ("." would skip them).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.Fuse()  # characters back together without separators
    extra = {"extra_special_tokens": {"image_token": IMAGE_TOKEN}} if with_image_token else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
        **extra,
    )
    if with_image_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == len(vocab)
    return tokenizer


def text_vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(dict.fromkeys(alphabet()))


def text_config(vocab_size: int):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=None,
        # A wide init keeps the logits far from uniform, so greedy choices are not decided by
        # float noise between padded and unpadded batches.
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )


# -- weights -------------------------------------------------------------------------------------


def _base_text_model():
    """The common ancestor (seed 0); every builder rebuilds it identically."""
    from transformers import MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(text_config(text_vocab_size())).eval()


@torch.no_grad()
def _add_deltas(tensors: dict[str, torch.Tensor], seed: int, scale: float = 0.1) -> None:
    """A "fine-tune": add seeded Gaussian deltas of ``scale`` x the tensor's std, in place."""
    g = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        t.add_(torch.randn(t.shape, generator=g) * scale * (std or 1.0))


def _text_params(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _vlm_with_base_language_model(vlm, seed: int) -> None:
    """Copy the base LM into the VLM's language model (shared vocabulary rows), then add deltas."""
    base = _base_text_model()
    v = base.config.vocab_size
    lm = vlm.get_decoder()  # the VLM's text decoder (embed_tokens, layers, norm)
    with torch.no_grad():
        for name, p in base.model.named_parameters():
            dst = lm.get_parameter(name)
            if name == "embed_tokens.weight":
                dst[:v].copy_(p)  # row V (the image token) keeps its own random init
            else:
                dst.copy_(p)
        vlm.lm_head.weight[:v].copy_(base.lm_head.weight)
    deltas = {f"lm.{k}": v for k, v in lm.named_parameters()}
    deltas["lm_head.weight"] = vlm.lm_head.weight
    _add_deltas({k: t.data for k, t in deltas.items()}, seed)


def _save_text(model, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    build_tokenizer(with_image_token=False).save_pretrained(out_dir)


@BUILDERS.register("tiny-text-base")
def build_text_base(out_dir: Path) -> None:
    _save_text(_base_text_model(), Path(out_dir))


@BUILDERS.register("tiny-text-llm")
def build_text_llm(out_dir: Path) -> None:
    model = _base_text_model()
    _add_deltas({k: p.data for k, p in _text_params(model).items()}, seed=1)
    _save_text(model, Path(out_dir))


def _save_vlm(model, processor, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


@BUILDERS.register("tiny-llava")
def build_tiny_llava(out_dir: Path) -> None:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    v = text_vocab_size()
    config = LlavaConfig(
        vision_config=vision_config(),
        text_config=text_config(v + 1),
        image_token_index=v,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(2)
    model = LlavaForConditionalGeneration(config).eval()
    _vlm_with_base_language_model(model, seed=3)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=build_tokenizer(with_image_token=True),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS position, dropped by the "default" strategy
    )
    _save_vlm(model, processor, Path(out_dir))


@BUILDERS.register("tiny-llava-next")
def build_tiny_llava_next(out_dir: Path) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    v = text_vocab_size()
    config = LlavaNextConfig(
        vision_config=vision_config(),
        text_config=text_config(v + 1),
        image_token_index=v,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(4)
    model = LlavaNextForConditionalGeneration(config).eval()
    _vlm_with_base_language_model(model, seed=5)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_grid_pinpoints=GRID_PINPOINTS,
        ),
        tokenizer=build_tokenizer(with_image_token=True),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    _save_vlm(model, processor, Path(out_dir))
