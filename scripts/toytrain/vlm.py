"""Train the toy VLM world's three models, deterministically, on a CPU.

EvoVLM-JP's family tree in miniature (``evomm.toy.vlm_world`` holds the data):

* ``base``  — a Llama LM trained from scratch on text only: English and Japanese sentences and
  Q/A about the colours and shapes of things, and parallel lines (the analogue of Mistral-7B).
* ``ja``    — ``base`` fine-tuned on Japanese text and Japanese Q/A (the analogue of Shisa Gamma).
* ``llava`` — a LlavaForConditionalGeneration whose language model starts as ``base`` (plus one
  embedding row for ``<image>``), with a tiny CLIP vision tower pre-trained on its own (stage
  ``vision``: name each training image's shape and colour, the analogue of CLIP's pre-training)
  and a new projector. The projector and the language model are then trained on English
  questions about shape images, the tower frozen, as LLaVA does (the analogue of
  LLaVA-1.6-Mistral). A tower trained through the LM from scratch learns colour but not shape
  in this budget; pre-trained, it names both.

So the VLM's language model and the Japanese model are fine-tunes of one base and task vectors
against ``base`` make sense. The models share one character-level tokenizer (the VLM's adds
``<image>`` as the last id). Nothing here is imported by evomm at run time: the trained models ship
in ``evomm/toy/models/vlm/{base,ja,llava}`` and ``scripts/train_toy_vlm.py`` rebuilds them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evomm.toy import vlm_world as world
from toytrain.llm import batch as text_batch  # the same masked, right-padded text batch

MODELS_DIR = Path(__file__).resolve().parents[2] / "evomm" / "toy" / "models" / "vlm"
MODEL_NAMES = ("base", "ja", "llava")  # the shipped models

# -- tokenizer and processor -------------------------------------------------------------------

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3
IMAGE_TOKEN = "<image>"  # id V (= text vocabulary size) in the VLM's vocabulary

_ASCII = "0123456789abcdefghijklmnopqrstuvwxyz .,?!:;'-\n"
_HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097))  # ぁ .. ゖ
_KATAKANA = "".join(chr(c) for c in range(0x30A1, 0x30FB))  # ァ .. ヺ
_JA_MARKS = "ー。、"
_KANJI = "問答何色形赤青緑黄白黒丸四角三"
ALPHABET = _ASCII + _HIRAGANA + _KATAKANA + _JA_MARKS + _KANJI

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 patch features per image (CLS dropped)


def build_tokenizer(with_image_token: bool = False):
    """One token per character of ALPHABET (after NFKC and lower-casing); ``<s>`` prepended,
    left padding; ``with_image_token`` appends ``<image>`` as the last id."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(set(ALPHABET)) != len(ALPHABET):
        raise AssertionError("the toy VLM alphabet lists a character twice")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(ALPHABET)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # newlines too
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.decoder = decoders.Fuse()
    extra = {"extra_special_tokens": {"image_token": IMAGE_TOKEN}} if with_image_token else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="left", model_max_length=256, **extra,
    )
    if with_image_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == len(vocab)
    return tokenizer


def build_processor():
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=build_tokenizer(with_image_token=True),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS position, dropped by the "default" strategy
    )


# -- architectures -----------------------------------------------------------------------------


def lm_config(vocab_size: int):
    """4 layers x hidden 64 (about 0.2M parameters), the same for the text models and the VLM."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def llava_config(text_vocab: int):
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, projection_dim=64,
        ),
        text_config=lm_config(text_vocab + 1),  # + the <image> row
        image_token_index=text_vocab,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1,  # the tower's last layer (a 2-layer tower has no spare one)
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


@torch.no_grad()
def put_language_model(vlm, lm) -> None:
    """Copy a text LM's weights into the VLM's language model and head (shared vocabulary rows);
    the VLM's extra ``<image>`` row keeps its own values."""
    v = lm.config.vocab_size
    decoder = vlm.get_decoder()
    for name, p in lm.model.named_parameters():
        dst = decoder.get_parameter(name)
        (dst[:v] if name == "embed_tokens.weight" else dst).copy_(p)
    vlm.lm_head.weight[:v].copy_(lm.lm_head.weight)


# -- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One training run.

    kind "text":   a Llama LM (from scratch, or ``parent``) on a weighted mix of text corpora;
    kind "vision": the CLIP vision tower, from scratch, learning to name each training image's
                   shape and colour (the analogue of CLIP's pre-training; a linear head on the
                   mean of the patch features that LLaVA reads, thrown away afterwards);
    kind "vqa":    a LLaVA built from the ``parent`` LM and the ``vision`` tower, trained on English
                   questions about training images; the tower stays frozen, as in LLaVA.
    """

    name: str
    kind: str
    parent: str | None = None
    mix: dict[str, float] = field(default_factory=dict, hash=False)
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    vision: str | None = None  # vqa: the vision stage whose tower the VLM gets


STAGES: tuple[Stage, ...] = (
    Stage("base", "text", mix={"english_text": 1, "english_qa": 2, "japanese_text": 1, "bilingual": 2},
          steps=600, lr=3e-3, seed=0),
    Stage("ja", "text", parent="base", mix={"japanese_text": 1, "japanese_qa": 2}, steps=300, lr=1e-3, seed=1),
    Stage("vision", "vision", steps=800, lr=3e-3, batch_size=64, seed=3),
    Stage("llava", "vqa", parent="base", vision="vision", steps=400, lr=1e-3, seed=2),
)


def _lr_at(stage: Stage, step: int) -> float:
    """Linear warm-up (5 %), cosine decay to 10 % of the peak."""
    warmup = max(1, stage.steps // 20)
    if step < warmup:
        return stage.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, stage.steps - warmup)
    return stage.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def vqa_prompt(q: world.VQAQuestion) -> str:
    template = world.EN_VQA_PROMPT if q.lang == "en" else world.JA_VQA_PROMPT
    return template.format(image=IMAGE_TOKEN, question=q.question)


def _vqa_batch(processor, questions: list[world.VQAQuestion]) -> dict[str, torch.Tensor]:
    """Prompt + " answer</s>", right-padded; loss on the answer and </s> only.

    The prompt goes through the processor exactly as at evaluation time (it expands ``<image>``
    into IMAGE_TOKENS positions); pixel_values is [batch, 3, 32, 32].
    """
    tok = processor.tokenizer
    enc = processor(images=[q.scene.image() for q in questions], text=[vqa_prompt(q) for q in questions],
                    return_tensors="pt", padding=True, padding_side="left")
    rows = []
    for row, q in enumerate(questions):
        prompt = enc["input_ids"][row][enc["attention_mask"][row] == 1].tolist()
        answer = tok(" " + q.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (p, a) in enumerate(rows):
        input_ids[row, : len(p) + len(a)] = torch.tensor(p + a)
        mask[row, : len(p) + len(a)] = 1
        labels[row, len(p) : len(p) + len(a)] = torch.tensor(a)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "pixel_values": enc["pixel_values"]}


class _VisionClassifier(torch.nn.Module):
    """A vision tower and a linear head naming shape (3 logits) and colour (6 logits) from the mean
    of the patch features LLaVA reads (layer ``vision_feature_layer``, CLS dropped)."""

    def __init__(self, config):
        from transformers import CLIPVisionModel

        super().__init__()
        self.tower = CLIPVisionModel(config.vision_config)
        self.layer = config.vision_feature_layer
        self.head = torch.nn.Linear(config.vision_config.hidden_size, len(world.SHAPES) + len(world.COLOURS))

    def forward(self, pixel_values: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor):
        hidden = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.layer]
        logits = self.head(hidden[:, 1:].mean(dim=1))  # [batch, 9]
        n = len(world.SHAPES)
        ce = torch.nn.functional.cross_entropy
        return ce(logits[:, :n], shape) + ce(logits[:, n:], colour)


def _vision_batch(processor, scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
    shapes, colours = list(world.SHAPES), list(world.COLOURS)
    return {
        "pixel_values": processor.image_processor([s.image() for s in scenes], return_tensors="pt")["pixel_values"],
        "shape": torch.tensor([shapes.index(s.shape) for s in scenes]),
        "colour": torch.tensor([colours.index(s.colour) for s in scenes]),
    }


def train_stage(model, stage: Stage, tokenizer=None, processor=None, log_every: int = 0) -> float:
    """Train ``model`` in place for one stage; returns the mean loss of the last 50 steps."""
    torch.manual_seed(stage.seed)
    rng = random.Random(stage.seed)
    pool = world.scene_splits()["train"]  # images of the vision and vqa stages
    if stage.kind == "text":
        lines = world.sample_mix(stage.mix, stage.steps * stage.batch_size, seed=stage.seed)
    if stage.kind == "vqa":  # LLaVA keeps its pre-trained vision tower frozen
        model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.0)

    model.train()
    recent: list[float] = []
    for step in range(stage.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(stage, step)
        if stage.kind == "text":
            batch = text_batch(tokenizer, lines[step * stage.batch_size : (step + 1) * stage.batch_size])
            loss = model(**batch).loss
        elif stage.kind == "vision":
            loss = model(**_vision_batch(processor, [rng.choice(pool) for _ in range(stage.batch_size)]))
        else:
            questions = [world.VQAQuestion(rng.choice(pool), rng.choice(world.QUESTION_KINDS), "en")
                         for _ in range(stage.batch_size)]
            loss = model(**_vqa_batch(processor, questions)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if log_every and (step + 1) % log_every == 0:
            print(f"  {stage.name} step {step + 1}/{stage.steps} loss {sum(recent) / len(recent):.3f}")
    model.requires_grad_(True)
    model.eval()
    return sum(recent) / len(recent)


STAGE_KINDS = ("text", "vision", "vqa")


def _new_model(stage: Stage, models: dict, text_vocab: int):
    """The model a stage starts from (seeded)."""
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    if stage.kind not in STAGE_KINDS:
        raise ValueError(f"stage {stage.name}: unknown kind {stage.kind!r}; known: {', '.join(STAGE_KINDS)}")
    torch.manual_seed(stage.seed)
    if stage.kind == "text":
        model = LlamaForCausalLM(lm_config(text_vocab))
        if stage.parent is not None:
            model.load_state_dict(models[stage.parent].state_dict())
        return model
    if stage.kind == "vision":
        return _VisionClassifier(llava_config(text_vocab))
    model = LlavaForConditionalGeneration(llava_config(text_vocab))  # seeded new projector
    put_language_model(model, models[stage.parent])
    model.model.vision_tower.load_state_dict(models[stage.vision].tower.state_dict())
    return model


def train_all(out_dir: Path = MODELS_DIR, stages: tuple[Stage, ...] | None = None, log_every: int = 0) -> dict:
    """Train every stage in order (default: STAGES); save the text and VQA models under
    ``out_dir/<name>`` (text models with the tokenizer, the VLM with its processor)."""
    stages = STAGES if stages is None else stages
    tokenizer = build_tokenizer()
    processor = build_processor()
    models: dict = {}
    for stage in stages:
        start = time.perf_counter()
        model = _new_model(stage, models, len(tokenizer))
        loss = train_stage(model, stage, tokenizer, processor, log_every=log_every)
        models[stage.name] = model
        where = ""
        if stage.kind != "vision":
            path = Path(out_dir) / stage.name
            model.save_pretrained(path)
            (tokenizer if stage.kind == "text" else processor).save_pretrained(path)
            where = f" -> {path}"
        print(f"{stage.name}: {stage.steps} steps, final loss {loss:.3f}, {time.perf_counter() - start:.1f} s{where}")
    return models


# -- scores ------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


@torch.no_grad()
def vqa_accuracy(vlm, processor, questions: list[world.VQAQuestion], max_new_tokens: int = 10) -> float:
    """Exact-match accuracy of greedy answers to image questions (batched, left-padded)."""
    correct = 0
    for start in range(0, len(questions), 64):
        chunk = questions[start : start + 64]
        enc = processor(images=[q.scene.image() for q in chunk], text=[vqa_prompt(q) for q in chunk],
                        return_tensors="pt", padding=True, padding_side="left")
        out = vlm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=processor.tokenizer.pad_token_id)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += sum(_norm(t) == q.answer for t, q in zip(texts, chunk))
    return correct / len(questions)


def ja_qa_accuracy(model, tokenizer, items: list[dict[str, str]], max_new_tokens: int = 10) -> float:
    from evomm.generation import generate_texts

    outs = generate_texts(model, tokenizer, [world.JA_QA_PROMPT.format(question=r["question"]) for r in items],
                          max_new_tokens=max_new_tokens, batch_size=64)
    return sum(_norm(o) == r["answer"] for o, r in zip(outs, items)) / len(items)


def score_all(models: dict) -> dict[str, dict[str, float]]:
    """Held-out exact match of every language model inside the VLM (its tower and projector):
    English VQA, Japanese text Q/A and the Japanese VQA target."""
    import copy

    processor = build_processor()
    en = world.vqa_questions("heldout", "en")
    ja = world.vqa_questions("heldout", "ja")
    qa = world.ja_qa_split("heldout")
    scores = {}
    for name in ("base", "ja", "llava"):
        vlm = models["llava"]
        if name != "llava":
            vlm = copy.deepcopy(vlm)
            put_language_model(vlm, models[name])
        scores[name] = {
            "english_vqa": vqa_accuracy(vlm, processor, en),
            "japanese_qa": ja_qa_accuracy(vlm, processor.tokenizer, qa),
            "japanese_vqa": vqa_accuracy(vlm, processor, ja),
        }
    return scores
