"""Data-flow-space routing: search-space decoding, the routed model, saving, the VLM case, plots."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from itertools import chain

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from evomm.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from evomm.merging.dfs import RoutedCausalLM, export_plain, find_decoder_stack, load_routed, save_routed
from evomm.recipe.route import Route, decode_route, encode_route, initial_vector, route_dim, slot_step
from evomm.tracking.route_plot import plot_route

VOCAB = 64
IMAGE_TOKEN = 63


def llama_config(layers: int, hidden: int = 32) -> LlamaConfig:
    # A large init range keeps logits far from uniform, so greedy tokens are not float ties.
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=64,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=128, initializer_range=0.5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0)


def saved_and_loaded(model, path, cls=AutoModelForCausalLM):
    """Save a model built from a config and load it back through from_pretrained."""
    model.save_pretrained(path)
    return cls.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model A (3 layers) and model B (2 layers): same architecture, different weights."""
    torch.manual_seed(0)
    a = saved_and_loaded(LlamaForCausalLM(llama_config(3)), tmp_path_factory.mktemp("a"))
    torch.manual_seed(1)
    b = saved_and_loaded(LlamaForCausalLM(llama_config(2)), tmp_path_factory.mktemp("b"))
    return a, b


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def manual_logits(sources, steps, scales, ids):
    """Run the route by hand: model A's embeddings and rotary, each layer on scaled input, A's head."""
    a = sources[0]
    with torch.no_grad():
        h = a.model.embed_tokens(ids)  # [batch, seq, hidden]
        pos = torch.arange(ids.shape[1])[None]  # [1, seq]
        cos_sin = a.model.rotary_emb(h, pos)
        for (m, l), s in zip(steps, scales):
            # No mask: SDPA then applies its own causal mask.
            h = sources[m].model.layers[l](h * s, attention_mask=None, position_embeddings=cos_sin,
                                           position_ids=pos)
        return a.lm_head(a.model.norm(h))


MIXED = Route(steps=[(0, 0), (1, 1), (0, 1), (0, 1), (1, 0), (0, 2)],
              scales=[1.0, 0.6, 1.4, 1.0, 0.8, 1.25])


# ---- the routed model ------------------------------------------------------------------------


def test_model_a_route_gives_model_a_logits(models, ids):
    a, b = models
    routed = RoutedCausalLM([a, b])
    assert routed.route.steps == [(0, 0), (0, 1), (0, 2)]
    assert torch.equal(logits(routed, ids), logits(a, ids))
    assert isinstance(routed.lm, type(a))


def test_hand_written_route_matches_manual_forward(models, ids):
    a, b = models
    routed = RoutedCausalLM([a, b], MIXED)
    expected = manual_logits([a, b], MIXED.steps, MIXED.scales, ids)
    got = logits(routed, ids)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, logits(a, ids), atol=1e-2)  # B's layers really ran
    # The scales matter: the same path with every scale 1 gives other logits.
    unscaled = manual_logits([a, b], MIXED.steps, [1.0] * len(MIXED.steps), ids)
    assert not torch.allclose(got, unscaled, atol=1e-3)


def test_generation_with_cache_equals_without(models, ids):
    a, b = models
    routed = RoutedCausalLM([a, b], MIXED)  # repeats layer (0, 1): needs distinct layer_idx
    prompt = ids[:1]
    with torch.no_grad():
        cached = routed.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = routed.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, uncached)
    # One cached step equals the full forward's last position.
    with torch.no_grad():
        out = routed(input_ids=ids[:, :-1], use_cache=True)
        assert len(out.past_key_values.layers) == len(MIXED.steps)
        step = routed(input_ids=ids[:, -1:], past_key_values=out.past_key_values).logits[:, -1]
    assert torch.allclose(step, logits(routed, ids)[:, -1], atol=1e-4, rtol=1e-4)


def test_steps_carry_their_own_layer_idx_and_sources_stay_untouched(models, ids):
    a, b = models
    before = logits(a, ids)
    routed = RoutedCausalLM([a, b], MIXED)
    layers = routed.lm.model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(len(MIXED.steps)))
    assert [layer.self_attn.layer_idx for layer in a.model.layers] == [0, 1, 2]
    assert [layer.self_attn.layer_idx for layer in b.model.layers] == [0, 1]
    assert all(not layer._forward_pre_hooks for layer in chain(a.model.layers, b.model.layers))
    assert a.config.num_hidden_layers == 3 and len(a.model.layers) == 3
    assert routed.lm.config.num_hidden_layers == len(MIXED.steps)
    assert torch.equal(logits(a, ids), before)


def test_hidden_states_follow_the_route(models, ids):
    a, b = models
    with torch.no_grad():
        a(input_ids=ids, output_hidden_states=True)  # hooks the source's layers first
    routed = RoutedCausalLM([a, b])
    for route in (MIXED, Route.model_a(3), MIXED):
        routed.set_route(route)
        with torch.no_grad():
            out = routed(input_ids=ids, output_hidden_states=True)
        assert len(out.hidden_states) == len(route.steps) + 1
        assert torch.equal(out.logits, logits(routed, ids))


def test_no_parameter_tensor_is_copied(models):
    a, b = models
    routed = RoutedCausalLM([a, b], MIXED)
    source_ptrs = {t.data_ptr() for t in chain(a.parameters(), a.buffers(), b.parameters(), b.buffers())}
    tensors = list(chain(routed.parameters(), routed.buffers()))
    assert tensors and all(t.data_ptr() in source_ptrs for t in tensors)
    # Step 1 runs B's layer 1 with B's very tensors.
    assert routed.lm.model.layers[1].mlp.up_proj.weight is b.model.layers[1].mlp.up_proj.weight
    assert routed.lm.lm_head.weight is a.lm_head.weight


def test_set_route_reroutes_in_place(models, ids):
    a, b = models
    routed = RoutedCausalLM([a, b], MIXED)
    mixed = logits(routed, ids)
    routed.set_route(Route.model_a(3))
    assert torch.equal(logits(routed, ids), logits(a, ids))  # no scale hook left behind
    routed.set_route(MIXED)
    assert torch.equal(logits(routed, ids), mixed)
    with pytest.raises(ConfigError, match="layer 2 of model 1"):
        routed.set_route(Route(steps=[(0, 0), (1, 2)], scales=[1.0, 1.0]))


def test_incompatible_sources_are_refused(models):
    a, _ = models
    torch.manual_seed(2)
    wide = LlamaForCausalLM(llama_config(2, hidden=48)).eval()
    with pytest.raises(IncompatibleModelsError, match="hidden_size"):
        RoutedCausalLM([a, wide])


def test_a_model_without_decoder_stack_is_refused():
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=32, patch_size=8))
    with pytest.raises(ConfigError, match="routing needs a decoder stack"):
        find_decoder_stack(vision)
    with pytest.raises(ConfigError, match="routing needs a decoder stack"):
        RoutedCausalLM([torch.nn.Linear(2, 2)])


# ---- saving ----------------------------------------------------------------------------------


def test_save_and_load_routed_round_trip(models, ids, tmp_path):
    a, b = models
    routed = RoutedCausalLM([a, b], MIXED, source_names=["a", "b"])
    out = save_routed(routed, None, tmp_path / "routed")
    loaded = load_routed(out)
    assert torch.equal(logits(loaded, ids), logits(routed, ids))
    # Each distinct layer is stored once: (0,0), (1,1), (0,1), (1,0), (0,2).
    assert loaded.layer_counts == [5]
    assert loaded.original_route.steps == MIXED.steps
    assert loaded.original_route.source_names == ["a", "b"]
    with pytest.raises(ModelLoadError, match="not an evomm routed checkpoint"):
        load_routed(tmp_path)


def test_export_plain_when_all_scales_are_one(models, ids, tmp_path):
    a, b = models
    route = Route(steps=MIXED.steps, scales=[1.0] * len(MIXED.steps))
    routed = RoutedCausalLM([a, b], route)
    plain = AutoModelForCausalLM.from_pretrained(export_plain(routed, tmp_path / "plain")).eval()
    assert type(plain) is type(a) and plain.config.num_hidden_layers == len(route.steps)
    assert torch.equal(logits(plain, ids), logits(routed, ids))
    routed.set_route(MIXED)
    with pytest.raises(ConfigError, match="scales != 1"):
        export_plain(routed, tmp_path / "refused")


# ---- search-space decoding -------------------------------------------------------------------

COUNTS = [3, 2]  # model A has 3 layers, model B 2; slot order per repetition: A0 A1 A2 B0 B1


def test_route_dim_and_slot_order():
    assert route_dim(COUNTS, 3) == 5 * 3 + 2
    assert route_dim([32, 32], 3, M=2) == 192 + 2  # the paper's T = 192 indicator slots
    assert [slot_step(s, COUNTS) for s in range(7)] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (0, 0), (0, 1)]
    with pytest.raises(ConfigError, match="M=3"):
        route_dim(COUNTS, 3, M=3)


def test_initial_vector_decodes_to_model_a():
    x = initial_vector(COUNTS, 3)
    assert x.shape == (route_dim(COUNTS, 3),) and np.all((0 <= x) & (x <= 1))
    route = decode_route(x, COUNTS, 3)
    assert route.steps == [(0, 0), (0, 1), (0, 2)] and route.scales == [1.0, 1.0, 1.0]
    assert np.all(x[3:15] <= 0.5) and np.all(x[:3] > 0.5)


def _vector(used_slots, w01=0.5, w10=0.5, counts=COUNTS, r=3):
    x = np.zeros(route_dim(counts, r))
    x[list(used_slots)] = 1.0
    x[-2:] = [w01, w10]  # W[0,1], W[1,0] (row-major, diagonal skipped)
    return x


def test_decode_threshold_order_and_w_range():
    x = _vector([0, 4, 6, 7], w01=0.25, w10=0.9)  # A0, B1, (rep 2) A1, A2
    x[1] = 0.5  # exactly 0.5 is not used
    route = decode_route(x, COUNTS, 3, w_range=(0.0, 2.0))
    assert route.steps == [(0, 0), (1, 1), (0, 1), (0, 2)]
    assert route.scales == pytest.approx([1.0, 0.5, 1.8, 1.0])  # A->B = W[0,1], B->A = W[1,0]
    assert np.allclose(route.w, [[1.0, 0.5], [1.8, 1.0]])
    # Other range, and values outside [0, 1] are clipped.
    route = decode_route(_vector([0, 4, 7], w01=1.7, w10=-3.0), COUNTS, 3, w_range=(0.5, 1.5))
    assert route.scales == pytest.approx([1.0, 1.5, 0.5])


def test_decode_fixes_both_ends():
    # Slot 0 unused and the last used slot is B's: A0 is still first, A2 is appended.
    route = decode_route(_vector([3, 9]), COUNTS, 3)
    assert route.steps == [(0, 0), (1, 0), (1, 1), (0, 2)]
    # Ending on model A's last layer appends nothing.
    assert decode_route(_vector([2]), COUNTS, 3).steps == [(0, 0), (0, 2)]
    # Nothing used at all: A's first and last layer.
    assert decode_route(np.zeros(route_dim(COUNTS, 3)), COUNTS, 3).steps == [(0, 0), (0, 2)]
    with pytest.raises(ConfigError, match="has 17 entries"):
        decode_route(np.zeros(5), COUNTS, 3)


def test_encode_route_inverts_decode_and_refuses_impossible_routes():
    x = _vector([0, 4, 6, 7, 13], w01=0.2, w10=0.7)
    route = decode_route(x, COUNTS, 3)
    again = decode_route(encode_route(route), COUNTS, 3)
    assert again.steps == route.steps and again.scales == pytest.approx(route.scales)
    assert np.allclose(again.w, route.w)
    # A0 four times needs four repetitions.
    with pytest.raises(ConfigError, match="does not fit"):
        encode_route(Route(steps=[(0, 0)] * 4 + [(0, 2)], scales=[1.0] * 5), COUNTS, 3)
    with pytest.raises(ConfigError, match="different scales"):
        encode_route(Route(steps=[(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)],
                           scales=[1.0, 0.5, 1.0, 0.7, 1.0]), COUNTS, 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=17, max_size=17))
def test_decode_encode_decode_is_stable(values):
    route = decode_route(np.array(values), COUNTS, 3)
    assert route.steps[0] == (0, 0) and route.steps[-1] == (0, 2)
    again = decode_route(encode_route(route), COUNTS, 3)
    assert again.steps == route.steps and again.scales == pytest.approx(route.scales)


def test_route_plain_data_round_trip():
    route = decode_route(_vector([0, 4, 7], w01=0.3), COUNTS, 3, source_names=["a", "b"])
    data = yaml.safe_load(yaml.safe_dump(route.to_dict()))
    back = Route.from_dict(data)
    assert back == route
    with pytest.raises(ConfigError, match="one scale per step"):
        Route(steps=[(0, 0), (0, 1)], scales=[1.0])
    with pytest.raises(ConfigError, match="unknown field"):
        Route.from_dict({"steps": [[0, 0]], "scales": [1.0], "stepz": 1})


def test_plot_route_writes_a_png(tmp_path):
    out = plot_route(MIXED, tmp_path / "route.png", source_names=["shisa", "wizardmath"])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ---- the VLM's language model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    torch.manual_seed(3)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=llama_config(3), image_token_id=IMAGE_TOKEN,
    )
    return saved_and_loaded(LlavaForConditionalGeneration(config), tmp_path_factory.mktemp("llava"),
                            cls=LlavaForConditionalGeneration)


@pytest.fixture(scope="module")
def vlm_inputs():
    n_image_tokens = (32 // 8) ** 2  # one token per patch (the CLS feature is dropped)
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.cat([torch.tensor([[1]]), torch.full((1, n_image_tokens), IMAGE_TOKEN),
                           torch.randint(3, IMAGE_TOKEN, (1, 5), generator=gen)], dim=1)
    return {"input_ids": input_ids, "pixel_values": torch.randn(1, 3, 32, 32, generator=gen)}


def test_vlm_language_model_is_routed(vlm, vlm_inputs, models, tmp_path):
    _, b = models
    assert find_decoder_stack(vlm).path == "model.language_model"
    routed = RoutedCausalLM([vlm, b])
    assert isinstance(routed.lm, LlavaForConditionalGeneration)
    with torch.no_grad():
        assert torch.equal(routed(**vlm_inputs).logits, vlm(**vlm_inputs).logits)

    routed.set_route(MIXED)
    assert routed.lm.config.text_config.num_hidden_layers == len(MIXED.steps)
    assert vlm.config.text_config.num_hidden_layers == 3
    source_ptrs = {t.data_ptr() for t in chain(vlm.parameters(), vlm.buffers(), b.parameters(), b.buffers())}
    assert all(t.data_ptr() in source_ptrs for t in chain(routed.parameters(), routed.buffers()))
    with torch.no_grad():
        mixed = routed(**vlm_inputs).logits
        assert not torch.allclose(mixed, vlm(**vlm_inputs).logits, atol=1e-2)
        cached = routed.generate(**vlm_inputs, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = routed.generate(**vlm_inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

    loaded = load_routed(save_routed(routed, None, tmp_path / "routed_vlm"))
    assert isinstance(loaded.lm, LlavaForConditionalGeneration)
    with torch.no_grad():
        assert torch.equal(loaded(**vlm_inputs).logits, mixed)
