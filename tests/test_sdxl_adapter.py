"""SDXL adapter, UNet grouping and single-file conversion, on tiny pipelines built offline.

The full-size checks (1680 tensors, 2.57B parameters, supermerger's block names, the original
key layout) build the real SDXL-base UNet config on the meta device: no memory, no download.
"""

from __future__ import annotations

import collections
import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from evomm.adapters.sdxl_blocks import group_unet
from evomm.adapters.sdxl_single_file import (
    CLIP_L_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    clip_l_from_original,
    clip_l_to_original,
    open_clip_from_original,
    open_clip_to_original,
    save_single_file,
    unet_from_original,
    unet_to_original,
    vae_from_original,
    vae_to_original,
)
from evomm.errors import ConfigError, IncompatibleModelsError, ModelLoadError

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that shape the weights)
SDXL_UNET_CONFIG = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    in_channels=4,
    layers_per_block=2,
    mid_block_type="UNetMidBlock2DCrossAttn",
    norm_num_groups=32,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)

# supermerger's SDXL block names, in its order (BASE first)
SUPERMERGER_XL = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def meta_sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Paths of builtin:tiny-sdxl-a/b/c, built into a private EVOMM_HOME."""
    from evomm.builtin import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVOMM_HOME", str(tmp_path_factory.mktemp("sdxl_home")))
        return {k: resolve(f"builtin:tiny-sdxl-{k}") for k in "abc"}


@pytest.fixture(scope="module")
def adapter_abc(tiny):
    from evomm.adapters.sdxl import SDXLAdapter

    models = [tiny["a"], tiny["b"], tiny["c"]]
    return SDXLAdapter(models, base=tiny["a"], device="cpu", timestep_spacing="trailing")


@functools.lru_cache(maxsize=None)
def unet_state(path):
    """A checkpoint's UNet tensors as loaded by diffusers (cached; tests only read them)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path, subfolder="unet").state_dict()


# ------------------------------------------------------------------- grouping (real SDXL, meta)


def test_real_sdxl_unet_size(meta_sdxl_unet):
    sd = meta_sdxl_unet.state_dict()
    assert len(sd) == 1680
    assert abs(sum(v.numel() for v in sd.values()) - 2.57e9) < 0.01e9


@pytest.mark.parametrize("grouping", ["mbw", "diffusers", "attn_split"])
def test_every_real_tensor_in_exactly_one_group(meta_sdxl_unet, grouping):
    names = list(meta_sdxl_unet.state_dict())
    g = group_unet(names, grouping)
    assert set(g.group_of) == set(names)  # a dict: one group per tensor
    assert set(g.group_of.values()) == set(g.groups)  # no empty, no unknown group
    assert len(g.groups) == len(set(g.groups))
    assert set(g.layer_groups) <= set(g.groups)
    assert all(0.0 <= t <= 1.0 for t in g.t_of.values())


def test_mbw_blocks_are_supermergers(meta_sdxl_unet):
    g = group_unet(meta_sdxl_unet.state_dict(), "mbw")
    assert g.groups == SUPERMERGER_XL
    assert g.layer_groups == SUPERMERGER_XL[1:]
    expected = {
        "conv_in.weight": "IN00",
        "time_embedding.linear_1.weight": "BASE",
        "add_embedding.linear_2.bias": "BASE",
        "down_blocks.0.resnets.0.conv1.weight": "IN01",
        "down_blocks.0.resnets.1.norm2.bias": "IN02",
        "down_blocks.0.downsamplers.0.conv.weight": "IN03",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "IN04",
        "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight": "IN05",
        "down_blocks.1.downsamplers.0.conv.bias": "IN06",
        "down_blocks.2.attentions.0.proj_in.weight": "IN07",
        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.weight": "IN08",
        "mid_block.resnets.0.conv1.weight": "M00",
        "mid_block.attentions.0.transformer_blocks.9.attn1.to_out.0.weight": "M00",
        "mid_block.resnets.1.conv2.weight": "M00",
        "up_blocks.0.resnets.0.conv1.weight": "OUT00",
        "up_blocks.0.attentions.2.proj_out.weight": "OUT02",
        "up_blocks.0.upsamplers.0.conv.weight": "OUT02",
        "up_blocks.1.attentions.0.norm.weight": "OUT03",
        "up_blocks.1.upsamplers.0.conv.weight": "OUT05",
        "up_blocks.2.resnets.0.conv_shortcut.weight": "OUT06",
        "up_blocks.2.resnets.2.conv2.weight": "OUT08",
        "conv_norm_out.weight": "OUT08",
        "conv_out.bias": "OUT08",
    }
    assert {k: g.group_of[k] for k in expected} == expected
    # t walks the 19 blocks from 0 to 1; BASE sits outside the stack at 0
    assert g.t_of["conv_in.weight"] == 0.0 and g.t_of["conv_out.weight"] == 1.0
    assert g.t_of["mid_block.resnets.0.conv1.weight"] == pytest.approx(9 / 18)
    assert g.t_of["time_embedding.linear_1.weight"] == 0.0


def test_diffusers_groups(meta_sdxl_unet):
    g = group_unet(meta_sdxl_unet.state_dict(), "diffusers")
    assert len(g.groups) == 37
    assert g.groups[:3] == ["time_embedding", "add_embedding", "conv_in"]
    assert g.groups[3:8] == [
        "down_blocks.0.resnets.0",
        "down_blocks.0.resnets.1",
        "down_blocks.0.downsamplers.0",
        "down_blocks.1.resnets.0",
        "down_blocks.1.attentions.0",
    ]
    assert "mid_block.attentions.0" in g.groups and g.groups[-2:] == ["conv_norm_out", "conv_out"]
    assert g.layer_groups == g.groups[2:]
    # each group holds exactly the tensors under its module path
    counts = collections.Counter(g.group_of.values())
    assert counts["down_blocks.2.attentions.1"] == sum(
        1 for n in g.group_of if n.startswith("down_blocks.2.attentions.1.")
    )


def test_attn_split_matches_evosdxl_rule(meta_sdxl_unet):
    names = list(meta_sdxl_unet.state_dict())
    g = group_unet(names, "attn_split")
    # EvoSDXL-JP's rebuild script: a key is attention if it contains one of these substrings
    attn = {n for n in names if any(k in n for k in ["to_k", "to_q", "to_v", "to_out.0"])}
    assert {n for n, grp in g.group_of.items() if grp == "attn"} == attn
    assert g.groups == ["attn", "other"] and g.layer_groups == ["attn", "other"]
    # per-tensor t still follows depth (the tensor's MBW block)
    assert g.t_of["conv_in.weight"] == 0.0 and g.t_of["conv_out.weight"] == 1.0


# ------------------------------------------------------------------------ single-file layout


def test_unet_original_layout_on_real_config(meta_sdxl_unet):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd = meta_sdxl_unet.state_dict()
    original = unet_to_original(sd)
    assert len(original) == 1680 and all(k.startswith(UNET_PREFIX) for k in original)
    # names as they appear in sd_xl_base_1.0.safetensors
    for key in [
        "input_blocks.0.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.4.1.proj_in.weight",
        "input_blocks.8.1.transformer_blocks.9.attn2.to_v.weight",
        "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.2.2.conv.weight",
        "output_blocks.5.2.conv.bias",
        "output_blocks.8.0.skip_connection.weight",
        "time_embed.0.weight",
        "label_emb.0.2.bias",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert UNET_PREFIX + key in original, key
    # round trip: same names, the very same tensors
    back = unet_from_original(original)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    # and diffusers' own converter reads our layout back to the same tensors
    theirs = convert_ldm_unet_checkpoint(original, dict(meta_sdxl_unet.config))
    assert theirs.keys() == sd.keys() and all(theirs[k] is sd[k] for k in sd)


def test_vae_and_open_clip_layout_on_real_configs():
    """Our VAE / OpenCLIP-bigG layouts read back by diffusers' own converters, at full size (meta)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        vae = AutoencoderKL(  # stabilityai/stable-diffusion-xl-base-1.0 vae/config.json
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512],
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=1024,
        )
        big_g = CLIPTextModelWithProjection(  # text_encoder_2/config.json
            CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=20, projection_dim=1280, hidden_act="gelu")
        )
    for model, ours, theirs in (
        (vae, vae_to_original(vae.state_dict()), lambda o: convert_ldm_vae_checkpoint(o, dict(vae.config))),
        (big_g, open_clip_to_original(big_g.state_dict()),
         lambda o: convert_open_clip_checkpoint(big_g, o, prefix=OPEN_CLIP_PREFIX)),
    ):
        sd = model.state_dict()
        back = theirs(ours)
        assert back.keys() == sd.keys()
        assert all(tuple(back[k].shape) == tuple(sd[k].shape) for k in sd)


def test_vae_and_text_encoder_round_trip():
    from evomm.toy.tiny_sdxl import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline(seed=3)
    cases = [
        (pipe.vae.state_dict(), vae_to_original, vae_from_original, VAE_PREFIX),
        (pipe.text_encoder.state_dict(), clip_l_to_original, clip_l_from_original, CLIP_L_PREFIX),
        (pipe.text_encoder_2.state_dict(), open_clip_to_original, open_clip_from_original, OPEN_CLIP_PREFIX),
    ]
    for sd, to_orig, from_orig, prefix in cases:
        original = to_orig(sd)
        assert all(k.startswith(prefix) for k in original)
        back = from_orig(original)
        if to_orig is clip_l_to_original and any(k.startswith("text_model.") for k in sd):
            back = clip_l_from_original(original, text_model_level=True)
        assert back.keys() == sd.keys()
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    vae_orig = vae_to_original(pipe.vae.state_dict())
    assert vae_orig[VAE_PREFIX + "encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert VAE_PREFIX + "decoder.up.1.upsample.conv.weight" in vae_orig  # decoder levels reversed
    te2 = open_clip_to_original(pipe.text_encoder_2.state_dict())
    assert te2[OPEN_CLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"].shape == (60, 20)
    assert te2[OPEN_CLIP_PREFIX + "text_projection"].shape == (20, 32)


def _perturbed_copy(pipe, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


def test_single_file_loads_with_diffusers(tiny, tmp_path):
    """Every component of our single file, read by diffusers' from_single_file, matches exactly."""
    from diffusers import StableDiffusionXLPipeline

    from evomm.toy.tiny_sdxl import build_tiny_sdxl_pipeline

    # weights that differ from the config folder's in every component, so nothing can silently
    # come from the folder instead of the file
    pipe = _perturbed_copy(build_tiny_sdxl_pipeline(seed=0), seed=11)
    path = save_single_file(pipe, tmp_path / "tiny.safetensors")
    loaded = StableDiffusionXLPipeline.from_single_file(str(path), config=tiny["a"])
    folder = StableDiffusionXLPipeline.from_pretrained(tiny["a"])
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want = getattr(pipe, component).state_dict()
        got = getattr(loaded, component).state_dict()
        assert got.keys() == want.keys(), component
        assert all(torch.equal(got[k], want[k]) for k in want), component
        other = getattr(folder, component).state_dict()
        assert not all(torch.equal(other[k], want[k]) for k in want), component


# -------------------------------------------------------------------------------- the adapter


def test_tiny_pipeline_structure_and_generation(tiny):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["a"])
    pipe.set_progress_bar_config(disable=True)
    names = [n for n, _ in pipe.unet.named_parameters()]
    assert len(group_unet(names, "diffusers").groups) == 37
    assert group_unet(names, "mbw").groups == SUPERMERGER_XL

    def image(seed):
        out = pipe("富士山と桜", num_inference_steps=2, guidance_scale=0.0, height=32, width=32,
                   generator=torch.Generator().manual_seed(seed), output_type="np")
        return out.images[0]

    a, b = image(0), image(0)
    assert a.shape == (32, 32, 3) and (a == b).all()
    ids = pipe.tokenizer("富士山")["input_ids"]
    assert pipe.tokenizer.unk_token_id not in ids[1:-1]  # Japanese -> byte symbols, no unknowns
    # b is a perturbed a: same architecture, different UNet weights
    sa, sb = unet_state(tiny["a"]), unet_state(tiny["b"])
    assert sa.keys() == sb.keys() and not torch.equal(sa["conv_in.weight"], sb["conv_in.weight"])


def test_adapter_slots(adapter_abc, tiny):
    ad = adapter_abc
    pipe = ad.handle().pipeline
    params = dict(pipe.unet.named_parameters())
    slots = ad.slots()
    assert [s.name for s in slots] == list(params)
    assert ad.groups() == SUPERMERGER_XL and ad.layer_groups() == SUPERMERGER_XL[1:]
    states = [unet_state(tiny[k]) for k in "abc"]
    for slot in slots:
        assert slot.target.data_ptr() == params[slot.name].data_ptr()
        assert slot.group in ad.groups()
        assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in slot.sources)
        for src, state in zip(slot.sources, states):
            assert torch.equal(src, state[slot.name])
        assert slot.base is slot.sources[0]  # base == source 0: loaded once, shared
        assert slot.sources[0].data_ptr() != slot.target.data_ptr()  # a copy, not the target
    assert ad.source_names == [tiny[k] for k in "abc"] and ad.base_name == tiny["a"]
    assert ad.notes() == {"components_from": tiny["a"]}
    assert pipe.scheduler.config.timestep_spacing == "trailing"


def test_candidates_written_in_place(adapter_abc, tiny):
    ad = adapter_abc
    pipe = ad.handle().pipeline
    with torch.no_grad():
        for slot in ad.slots():
            slot.target.copy_(slot.sources[1])
    got = pipe.unet.state_dict()
    want = unet_state(tiny["b"])
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the sources are untouched: writing a back restores a
    with torch.no_grad():
        for slot in ad.slots():
            slot.target.copy_(slot.sources[0])
    want_a = unet_state(tiny["a"])
    assert all(torch.equal(pipe.unet.state_dict()[k], want_a[k]) for k in want_a)


def test_save_merged_writes_both_formats(adapter_abc, tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from evomm.adapters.sdxl import single_file_path

    ad = adapter_abc
    with torch.no_grad():  # a candidate: the mean of the three sources
        for slot in ad.slots():
            slot.target.copy_(torch.stack(slot.sources).mean(0))
    want = {k: v.clone() for k, v in ad.handle().pipeline.unet.state_dict().items()}
    out = tmp_path / "merged"
    ad.save_merged(out)
    assert (out / "model_index.json").is_file()
    from_folder = StableDiffusionXLPipeline.from_pretrained(str(out)).unet.state_dict()
    from_file = StableDiffusionXLPipeline.from_single_file(str(single_file_path(out)), config=tiny["a"])
    for got in (from_folder, from_file.unet.state_dict()):
        assert all(torch.equal(got[k], want[k]) for k in want)
    from safetensors import safe_open

    with safe_open(str(single_file_path(out)), framework="pt") as f:
        keys = list(f.keys())
    prefixes = (UNET_PREFIX, VAE_PREFIX, CLIP_L_PREFIX, OPEN_CLIP_PREFIX)
    assert all(k.startswith(prefixes) for k in keys)
    assert sum(k.startswith(UNET_PREFIX) for k in keys) == len(want)
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)


@pytest.mark.parametrize("grouping,n_groups", [("diffusers", 37), ("attn_split", 2)])
def test_adapter_groupings(tiny, grouping, n_groups):
    from evomm.adapters.sdxl import SDXLAdapter

    ad = SDXLAdapter([tiny["a"], tiny["c"]], base=tiny["b"], grouping=grouping, device="cpu")
    assert len(ad.groups()) == n_groups
    base = unet_state(tiny["b"])
    assert all(torch.equal(s.base, base[s.name]) for s in ad.slots())
    assert {s.group for s in ad.slots()} == set(ad.groups())
    assert len(ad.slots()) == len(list(ad.handle().pipeline.unet.parameters()))


def test_merge_text_encoders_and_storage_dtype(tiny):
    from evomm.adapters.sdxl import SDXLAdapter

    ad = SDXLAdapter(
        [tiny["a"], tiny["b"]], merge_text_encoders=True, components_from=1, dtype="bfloat16", device="cpu"
    )
    assert ad.groups()[:3] == ["TE1", "TE2", "BASE"]
    pipe = ad.handle().pipeline
    te = [s for s in ad.slots() if s.group in ("TE1", "TE2")]
    n_te = len(list(pipe.text_encoder.parameters())) + len(list(pipe.text_encoder_2.parameters()))
    assert len(te) == n_te and all(s.name.startswith(("text_encoder.", "text_encoder_2.")) for s in te)
    te_params = dict(pipe.text_encoder_2.named_parameters())
    slot = next(s for s in te if s.name.startswith("text_encoder_2."))
    assert slot.target.data_ptr() == te_params[slot.name[len("text_encoder_2."):]].data_ptr()
    assert not torch.equal(slot.sources[0], slot.sources[1])  # b's text encoders are perturbed
    assert all(src.dtype == torch.bfloat16 and src.device.type == "cpu" for s in ad.slots() for src in s.sources)
    assert slot.target.dtype == torch.bfloat16
    assert ad.notes() == {"components_from": tiny["b"]}


def test_lora_fused_into_one_source(tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from evomm.adapters.sdxl import SDXLAdapter

    unet = UNet2DConditionModel.from_pretrained(tiny["b"], subfolder="unet")
    torch.manual_seed(0)
    # random A and B (init_lora_weights=False), so the LoRA is not a no-op; alpha = r: scale 1
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(unet))
    lora_file = tmp_path / "pytorch_lora_weights.safetensors"
    lora = load_file(str(lora_file))

    ad = SDXLAdapter([tiny["a"], tiny["b"]], lora={"1": str(lora_file)}, lora_scale=0.5, device="cpu")
    plain = [unet_state(tiny["a"]), unet_state(tiny["b"])]
    changed = set()
    for slot in ad.slots():
        assert torch.equal(slot.sources[0], plain[0][slot.name])
        if not torch.equal(slot.sources[1], plain[1][slot.name]):
            changed.add(slot.name)
    targeted = {
        n for n in plain[1] if n.endswith(("to_q.weight", "to_v.weight"))
    }
    assert changed == targeted
    name = sorted(targeted)[0]
    module = name[: -len(".weight")]
    a, b = lora[f"unet.{module}.lora_A.weight"], lora[f"unet.{module}.lora_B.weight"]
    delta = next(s for s in ad.slots() if s.name == name).sources[1] - plain[1][name]
    torch.testing.assert_close(delta, 0.5 * b @ a, rtol=1e-4, atol=1e-6)
    # the resident pipeline (source 0's) carries no LoRA layers
    assert not any("lora" in n for n, _ in ad.handle().pipeline.unet.named_parameters())


def test_single_file_source(tiny, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from evomm.adapters.sdxl import SDXLAdapter

    path = save_single_file(StableDiffusionXLPipeline.from_pretrained(tiny["c"]), tmp_path / "c.safetensors")
    # as a UNet-only source (from_single_file of the UNet) and as the resident pipeline
    for models, components_from in (([tiny["a"], str(path)], 0), ([str(path), tiny["a"]], 0)):
        ad = SDXLAdapter(models, components_from=components_from, single_file_config=tiny["a"], device="cpu")
        i = models.index(str(path))
        want = unet_state(tiny["c"])
        assert all(torch.equal(s.sources[i], want[s.name]) for s in ad.slots())


def test_incompatible_models_rejected_before_loading(tiny, tmp_path):
    import json

    from evomm.adapters.sdxl import SDXLAdapter
    from evomm.toy.tiny_sdxl import TINY_UNET_CONFIG

    other = tmp_path / "other"
    (other / "unet").mkdir(parents=True)
    config = {**TINY_UNET_CONFIG, "cross_attention_dim": 24, "_class_name": "UNet2DConditionModel"}
    # only a config, no weights: a weight load would fail with ModelLoadError instead
    (other / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleModelsError, match=r"attn2\.to_k\.weight"):
        SDXLAdapter([tiny["a"], str(other)], device="cpu")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_bad_input_errors(tiny, tmp_path):
    from evomm.adapters.sdxl import SDXLAdapter

    with pytest.raises(ModelLoadError, match="no-such-dir"):
        SDXLAdapter([tiny["a"], str(tmp_path / "no-such-dir")])
    with pytest.raises(ModelLoadError, match="missing.safetensors"):
        SDXLAdapter([tiny["a"], str(tmp_path / "missing.safetensors")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty"):
        SDXLAdapter([tiny["a"], str(empty)])
    with pytest.raises(ConfigError, match="grouping"):
        SDXLAdapter([tiny["a"]], grouping="blocks")
    with pytest.raises(ConfigError, match="components_from"):
        SDXLAdapter([tiny["a"], tiny["b"]], components_from=2)
    with pytest.raises(ConfigError, match="lora"):
        SDXLAdapter([tiny["a"]], lora={3: "x.safetensors"})
    with pytest.raises(ConfigError, match="dtype"):
        SDXLAdapter([tiny["a"]], dtype="float8")
    unet_only = tmp_path / "unet_only"
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(tiny["b"], subfolder="unet").save_pretrained(unet_only / "unet")
    with pytest.raises(ConfigError, match="components_from"):
        SDXLAdapter([str(unet_only), tiny["a"]], components_from=0)
    # but a UNet-only source is fine as a merge source
    ad = SDXLAdapter([tiny["a"], str(unet_only)], device="cpu")
    want = unet_state(tiny["b"])
    assert all(torch.equal(s.sources[1], want[s.name]) for s in ad.slots())
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # a hub id that cannot be fetched is named in the error
        with pytest.raises(ModelLoadError, match="no-such-org/no-such-sdxl"):
            SDXLAdapter([tiny["a"], "no-such-org/no-such-sdxl"])
