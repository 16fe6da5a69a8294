"""A character-level tokenizer for the toy world, built offline over a fixed alphabet.

One token per character: digits, lowercase ASCII, space, a little punctuation, all hiragana,
the prolonged-sound mark and the few kanji the world uses (問, 答, the weekdays, ...). Input is
NFKC-normalised and lower-cased first, so full-width "？" and "３" map onto "?" and "3".
Characters outside the alphabet become ``<unk>``. The tokenizer prepends ``<s>`` to every text
(the models are trained on ``<s> line </s>``) and pads on the left, as generation needs.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3

_ASCII = "0123456789abcdefghijklmnopqrstuvwxyz .,?!:;'-=+*/()"
_HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097))  # ぁ .. ゖ (86 characters)
_JA_MARKS = "ー。、「」"
_KANJI = "問答月火水木金土日曜年時人何大小本円"
ALPHABET = _ASCII + _HIRAGANA + _JA_MARKS + _KANJI


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy world's tokenizer (vocabulary of ``len(SPECIAL_TOKENS) + len(ALPHABET)`` < 256)."""
    if len(set(ALPHABET)) != len(ALPHABET):
        raise AssertionError("the toy alphabet lists a character twice")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(ALPHABET)})

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Every character (spaces included) is its own pre-token, hence its own token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.Fuse()  # join characters back without separators

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=256,
    )
