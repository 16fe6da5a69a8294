"""VLMAdapter on tiny LLaVA / LLaVA-NeXT checkpoints and tiny text LLMs (real loading, no network).

The cross-modal mapping is checked against models loaded independently here, with the
VLM <-> LLM names written out by hand (``model.language_model.<rel>`` <-> ``model.<rel>``).
"""

from __future__ import annotations

import json
import os
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaForConditionalGeneration,
)

from evomm.adapters.base import Adapter
from evomm.adapters.vlm import VLMAdapter
from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.merging.engine import write_source
from evomm.toy import tiny_vlm
from evomm.toy.tiny_vqa import draw

VLM_LM = "model.language_model."


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlm_models")
    out = {}
    for name, build in [
        ("llava", tiny_vlm.build_tiny_llava),
        ("next", tiny_vlm.build_tiny_llava_next),
        ("llm", tiny_vlm.build_text_llm),
        ("base", tiny_vlm.build_text_base),
    ]:
        out[name] = str(root / name)
        build(root / name)
    # Config-only folders (no weights): a model with a different MLP width, and one with a third
    # layer. If the adapter loaded weights before checking shapes, loading would fail instead.
    for name, changes in [("wide", {"intermediate_size": 96}), ("deep", {"num_hidden_layers": 3})]:
        config = tiny_vlm.text_config(tiny_vlm.text_vocab_size())
        for key, value in changes.items():
            setattr(config, key, value)
        config.architectures = ["MistralForCausalLM"]
        (root / name).mkdir()
        config.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module")
def adapter(paths):
    return VLMAdapter([paths["llava"], paths["llm"]], base=paths["base"], device="cpu")


@pytest.fixture(scope="module")
def originals(paths):
    """The three models loaded independently: name -> tensor."""
    vlm = LlavaForConditionalGeneration.from_pretrained(paths["llava"])
    llm = AutoModelForCausalLM.from_pretrained(paths["llm"])
    base = AutoModelForCausalLM.from_pretrained(paths["base"])
    return {
        "vlm": {k: v.detach().clone() for k, v in vlm.state_dict().items()},
        "llm": {k: v.detach().clone() for k, v in llm.state_dict().items()},
        "base": {k: v.detach().clone() for k, v in base.state_dict().items()},
    }


def llm_name(vlm_name: str) -> str:
    """The hand-written mapping: model.language_model.X -> model.X; lm_head stays."""
    if vlm_name.startswith(VLM_LM):
        return "model." + vlm_name[len(VLM_LM):]
    assert vlm_name.startswith("lm_head.")
    return vlm_name


def test_groups_and_slots(adapter, originals):
    assert isinstance(adapter, Adapter)
    assert adapter.groups() == ["embed", "layers.0", "layers.1", "norm", "head"]
    assert adapter.layer_groups() == ["layers.0", "layers.1"]
    assert adapter.source_kinds == ["vlm", "llm"]
    slots = {s.name: s for s in adapter.slots()}
    lm_names = {k for k in originals["vlm"] if k.startswith(VLM_LM) or k.startswith("lm_head.")}
    assert set(slots) == lm_names  # every language-model tensor, nothing of vision / projector
    assert slots[VLM_LM + "layers.1.mlp.up_proj.weight"].group == "layers.1"
    assert slots[VLM_LM + "embed_tokens.weight"].group == "embed"
    assert slots[VLM_LM + "norm.weight"].group == "norm"
    assert slots["lm_head.weight"].group == "head"
    assert [slots[VLM_LM + f"layers.{i}.input_layernorm.weight"].t for i in (0, 1)] == [0.0, 1.0]
    for s in adapter.slots():
        assert len(s.sources) == 2 and s.base is not None
        assert s.sources[0].shape == s.sources[1].shape == s.base.shape == s.target.shape
        # sources are the right models' tensors under the mapped names
        rows = s.target.shape[0]
        assert torch.equal(s.sources[1], originals["llm"][llm_name(s.name)][:rows])
        assert torch.equal(s.base, originals["base"][llm_name(s.name)][:rows])
        assert torch.equal(s.sources[0], originals["vlm"][s.name][:rows])


def test_cross_modal_merge_by_hand(adapter, originals):
    """0.5 * VLM + 0.5 * LLM written into every slot lands on the mapped VLM tensors."""
    vlm, llm = originals["vlm"], originals["llm"]
    v = tiny_vlm.text_vocab_size()
    with torch.no_grad():
        for s in adapter.slots():
            s.target.copy_(0.5 * s.sources[0] + 0.5 * s.sources[1])
    try:
        state = adapter.model.state_dict()
        for name, value in state.items():
            if name.startswith(VLM_LM) or name.startswith("lm_head."):
                other = llm[llm_name(name)]
                if other.shape != value.shape:  # vocabulary matrices: V merged rows + 1 VLM row
                    assert value.shape[0] == v + 1 and other.shape[0] == v
                    torch.testing.assert_close(value[:v], 0.5 * vlm[name][:v] + 0.5 * other)
                    assert torch.equal(value[v:], vlm[name][v:])
                else:
                    torch.testing.assert_close(value, 0.5 * vlm[name] + 0.5 * other)
            else:  # vision tower and projector are kept from the VLM
                assert name.startswith(("model.vision_tower.", "model.multi_modal_projector.")), name
                assert torch.equal(value, vlm[name]), name
    finally:
        write_source(adapter.slots(), 0)  # back to the VLM for the other tests


def test_vocabulary_rows(adapter, originals):
    v = tiny_vlm.text_vocab_size()
    assert adapter.notes() == {
        "kept_from_vlm": ["projector", "vision_tower"],
        "vocab_rows": {"merged": v, "kept_from_vlm": 1},
    }
    embed = adapter.model.get_input_embeddings().weight
    head = adapter.model.get_output_embeddings().weight
    write_source(adapter.slots(), 1)  # the engine writes the LLM into the target
    try:
        for matrix, name in ((embed, VLM_LM + "embed_tokens.weight"), (head, "lm_head.weight")):
            assert torch.equal(matrix[:v], originals["llm"][llm_name(name)])
            assert torch.equal(matrix[v:], originals["vlm"][name][v:])  # the <image> row untouched
        layer = adapter.model.model.language_model.layers[0].mlp.down_proj.weight
        assert torch.equal(layer, originals["llm"]["model.layers.0.mlp.down_proj.weight"])
    finally:
        write_source(adapter.slots(), 0)
    # sources[0] is a copy, not the target itself: writing it back restores the VLM exactly
    for name, value in adapter.model.state_dict().items():
        assert torch.equal(value, originals["vlm"][name]), name


def test_mergeable_projector_and_vision_tower(paths):
    both = VLMAdapter([paths["llava"], paths["llava"]], mergeable=["language_model", "projector", "vision_tower"],
                      device="cpu")
    assert both.groups()[:2] == ["vision_tower", "projector"]
    names = {s.name for s in both.slots()}
    assert any(n.startswith("model.vision_tower.") for n in names)
    assert any(n.startswith("model.multi_modal_projector.") for n in names)
    assert len(names) == len(list(both.model.parameters()))  # every tensor exactly once
    assert both.notes() == {"kept_from_vlm": [], "vocab_rows": {"merged": tiny_vlm.text_vocab_size() + 1,
                                                                 "kept_from_vlm": 0}}
    with pytest.raises(IncompatibleModelsError, match="text LLM and has no projector"):
        VLMAdapter([paths["llava"], paths["llm"]], mergeable=["language_model", "projector"], device="cpu")


def test_llava_next_adapter(paths):
    a = VLMAdapter([paths["next"], paths["llm"]], device="cpu")
    assert a.groups() == ["embed", "layers.0", "layers.1", "norm", "head"]
    assert all(not s.name.startswith(("model.vision_tower", "model.image_newline")) for s in a.slots())
    proj = VLMAdapter([paths["next"], paths["next"]], mergeable=["projector"], device="cpu")
    assert proj.groups() == ["projector"]
    assert {s.name for s in proj.slots()} >= {"model.image_newline", "model.multi_modal_projector.linear_1.weight"}


def test_incompatible_shapes_name_tensors_before_loading(paths):
    with pytest.raises(IncompatibleModelsError) as err:
        VLMAdapter([paths["llava"], paths["wide"]], device="cpu")
    msg = str(err.value)
    assert "model.language_model.layers.0.mlp.up_proj.weight (128, 64)" in msg
    assert "model.layers.0.mlp.up_proj.weight (96, 64)" in msg
    with pytest.raises(IncompatibleModelsError, match=r"model\.layers\.2\..* has no counterpart in the VLM"):
        VLMAdapter([paths["llava"], paths["llm"]], base=paths["deep"], device="cpu")


def test_bad_options(paths):
    with pytest.raises(ConfigError, match="first of adapter.models must be the VLM"):
        VLMAdapter([paths["llm"], paths["llava"]], device="cpu")
    with pytest.raises(ConfigError, match="mergeable"):
        VLMAdapter([paths["llava"], paths["llm"]], mergeable=["vision"], device="cpu")
    with pytest.raises(ConfigError, match="empty"):
        VLMAdapter([], device="cpu")


def _answer(model, processor, image) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "これは何色ですか？"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6 or out[0, -1] == model.generation_config.eos_token_id
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def test_save_merged_loads_and_answers(adapter, tmp_path):
    import random

    with torch.no_grad():
        for s in adapter.slots():
            s.target.copy_(0.3 * s.sources[0] + 0.7 * s.sources[1])
    try:
        adapter.save_merged(tmp_path / "merged")
        files = set(os.listdir(tmp_path / "merged"))
        assert "model.safetensors" in files and "processor_config.json" in files
        assert json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"] == [
            "LlavaForConditionalGeneration"
        ]
        loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
        processor = AutoProcessor.from_pretrained(tmp_path / "merged")
        for name, value in adapter.model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), name
        image = draw("丸", (220, 30, 30), random.Random(0))
        with torch.no_grad():
            answer = _answer(loaded, processor, image)
            assert answer == _answer(adapter.model, adapter.processor, image)
        assert isinstance(answer, str)
    finally:
        write_source(adapter.slots(), 0)


def test_builtins_and_shared_token_ids(paths, tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    from evomm import builtin
    from evomm.data.vqa import JA_SYSTEM_PROMPT
    from evomm.toy.tiny_vqa import texts

    names = set(builtin.builtin_names())
    assert {"tiny-llava", "tiny-llava-next", "tiny-text-llm", "tiny-text-base"} <= names
    monkeypatch.setenv("EVOMM_HOME", str(tmp_path))
    path = builtin.resolve("builtin:tiny-text-base")
    assert path == str(tmp_path / "models" / "tiny-text-base")
    assert AutoConfig.from_pretrained(path).vocab_size == tiny_vlm.text_vocab_size()

    # Row i of the VLM's embeddings and row i of the LLM's are the same token, so merging
    # the first V rows merges like with like; <image> is the one extra VLM token (id V).
    text_tok = AutoTokenizer.from_pretrained(paths["llm"])
    vlm_tok = AutoProcessor.from_pretrained(paths["llava"]).tokenizer
    text_vocab, vlm_vocab = text_tok.get_vocab(), vlm_tok.get_vocab()
    assert len(text_vocab) == tiny_vlm.text_vocab_size()
    assert {k: v for k, v in vlm_vocab.items() if k != "<image>"} == text_vocab
    assert vlm_vocab["<image>"] == len(text_vocab)
    # The tiny data, the system prompt and ASCII all tokenize without <unk>, one token per char.
    for text in [*texts(), JA_SYSTEM_PROMPT, "What colour? 赤です。\n"]:
        ids = text_tok(text, add_special_tokens=False)["input_ids"]
        assert text_tok.unk_token_id not in ids, text
        assert text_tok.decode(ids) == unicodedata.normalize("NFKC", text)


def test_bfloat16_handle_answers_the_vqa_task(paths, tmp_path):
    """The adapter's handle goes straight into the task; pixel values follow the model's dtype."""
    from evomm.toy.tiny_vqa import write_tiny_vqa
    from evomm.tasks import build_task

    a = VLMAdapter([paths["llava"], paths["llm"]], base=paths["base"], dtype="bfloat16", device="cpu")
    assert a.model.dtype == torch.bfloat16
    assert all(s.sources[1].dtype == torch.bfloat16 and s.base.dtype == torch.bfloat16 for s in a.slots())
    data = write_tiny_vqa(tmp_path / "vqa", n_train=3, n_test=2)
    task = build_task("ja_vg_vqa", dataset=str(data), batch_size=3, max_new_tokens=3, num_beams=1,
                      repetition_penalty=1.0)
    result = task.evaluate(a.handle(), "train")
    assert 0.0 <= result["fitness"] <= 1.0 and result["n"] == 3


def test_tiny_models_share_an_ancestor(originals):
    """tiny-llava's language model and tiny-text-llm are base + their own small deltas (10% of std)."""
    base, llm, vlm = originals["base"], originals["llm"], originals["vlm"]
    v = tiny_vlm.text_vocab_size()
    for name in ("model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight", "lm_head.weight"):
        b = base[name]
        from_vlm = vlm[VLM_LM + name[len("model."):] if name.startswith("model.") else name][:v]
        for other in (llm[name], from_vlm):
            rel = float((other - b).std() / b.std())
            assert 0.05 < rel < 0.15, (name, rel)
        assert not torch.equal(llm[name], from_vlm)  # different fine-tunes
