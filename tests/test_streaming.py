"""One-shot streamed merges: equal to the in-memory adapter path, loadable, sharded, lean."""

from __future__ import annotations

import json
import shutil
import weakref

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from evomm.adapters.llm import LLMAdapter
from evomm.builtin import resolve
from evomm.cli import main as cli_main
from evomm.errors import ConfigError
from evomm.merging import streaming
from evomm.merging.engine import materialize
from evomm.recipe.recipe import Entry, Recipe
from evomm.merging.streaming import parse_size, stream_merge, why_not_streamed

PARAMS = {
    "ties": {"weight": [0.4, 0.8], "density": [0.3, 0.7]},
    "dare_ties": {"weight": [0.4, 0.8], "density": [0.3, 0.7]},
    "linear": {"weight": [0.4, 0.8]},
    "task_arithmetic": {"weight": [0.4, 0.8]},
    "dare_linear": {"weight": [0.4, 0.8], "density": [0.5, 0.9]},
    "breadcrumbs": {"weight": [0.4, 0.8], "density": [0.8, 0.7]},  # no kernel: the reference path
}


@pytest.fixture(scope="module")
def builtin_refs():
    return [resolve("builtin:tiny-llm-a"), resolve("builtin:tiny-llm-b")], resolve("builtin:tiny-llm-base")


@pytest.fixture(scope="module")
def sharded_bf16(builtin_refs, tmp_path_factory):
    """The same three models stored as bfloat16 shards with an index file."""
    root = tmp_path_factory.mktemp("sharded")
    models, base = builtin_refs
    out = []
    for i, ref in enumerate([*models, base]):
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.bfloat16)
        model.save_pretrained(root / f"m{i}", max_shard_size="20KB")
        AutoTokenizer.from_pretrained(ref).save_pretrained(root / f"m{i}")
        assert (root / f"m{i}" / streaming.INDEX_FILE).exists()
        out.append(str(root / f"m{i}"))
    return out[:2], out[2]


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Tiny models with tied input/output embeddings (no lm_head.weight on disk)."""
    root = tmp_path_factory.mktemp("tied")
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=50, tie_word_embeddings=True)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(root / f"t{seed}")
        paths.append(str(root / f"t{seed}"))
    return paths[:2], paths[2]


def recipe_for(method, models, base, dtype="float32", seed=3):
    return Recipe(adapter="llm", method=method, models=list(models), base=base, seed=seed,
                  entries=[Entry(params=PARAMS[method])], adapter_options={"dtype": dtype})


def in_memory(recipe, out_dir):
    """The adapter path: load, materialise in the resident target, save_pretrained."""
    adapter = LLMAdapter(models=recipe.models, base=recipe.base, dtype=recipe.adapter_options["dtype"],
                         device="cpu", require_tokenizer=False)
    materialize(adapter.slots(), recipe)
    adapter.save_merged(out_dir)


def assert_same_weights(dir_a, dir_b):
    a = AutoModelForCausalLM.from_pretrained(dir_a).state_dict()
    b = AutoModelForCausalLM.from_pretrained(dir_b).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(params=["numba", "torch"])
def kernels_path(request, monkeypatch):
    """The streamed merge on both CPU paths; the in-memory one it is compared with on the
    default path (numba here), so the two paths are compared too."""
    monkeypatch.setenv("EVOMM_KERNELS", request.param)
    return request.param


def in_memory_default(recipe, out_dir, monkeypatch):
    monkeypatch.delenv("EVOMM_KERNELS", raising=False)
    in_memory(recipe, out_dir)


@pytest.mark.parametrize("method", list(PARAMS))
def test_streamed_equals_in_memory_merge(method, builtin_refs, tmp_path, kernels_path, monkeypatch):
    models, base = builtin_refs
    recipe = recipe_for(method, models, base)
    stream_merge(recipe, tmp_path / "streamed", device="cpu")
    in_memory_default(recipe, tmp_path / "memory", monkeypatch)
    assert_same_weights(tmp_path / "streamed", tmp_path / "memory")


def test_della_with_a_configs_epsilon_and_layer_densities(builtin_refs, tmp_path):
    """mergekit's della example: densities [1, 0.7, 0.1] over the layers with epsilon 0.05
    (density 0.1 +/- 0.15, the default epsilon, would not be valid); streamed equals in memory."""
    models, base = builtin_refs
    config = {"merge_method": "della", "base_model": base, "dtype": "float32",
              "parameters": {"normalize": True, "epsilon": 0.05},
              "models": [{"model": models[0], "parameters": {"weight": 1.0, "density": [1, 0.7, 0.1]}},
                         {"model": models[1], "parameters": {"weight": [0, 0.3, 0.7, 1], "density": 0.5}}]}
    path = tmp_path / "della.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["merge", str(path), str(tmp_path / "out"), "--device", "cpu"]) == 0
    from evomm.interop.mergekit_config import recipe_from_mergekit

    in_memory(recipe_from_mergekit(config), tmp_path / "memory")
    assert_same_weights(tmp_path / "out", tmp_path / "memory")


def test_della_epsilon_too_wide_for_a_layer_is_refused_before_writing(builtin_refs, tmp_path):
    models, base = builtin_refs
    recipe = Recipe(adapter="llm", method="della", models=models, base=base, seed=1,
                    adapter_options={"dtype": "float32"},
                    entries=[Entry(params={"weight": [1.0, 1.0], "density": [[1.0, 0.1], 0.5],
                                           "epsilon": [0.15, 0.1]})])
    with pytest.raises(ConfigError, match=r"density 0\.1 \+/- epsilon 0\.15 .*tensor model\.layers\.1"):
        stream_merge(recipe, tmp_path / "streamed", device="cpu")
    assert not (tmp_path / "streamed").exists()


@pytest.mark.parametrize("method, tie_order, window", [("ties", "index", False), ("ties", "mergekit", False),
                                                       ("ties", "index", True), ("ties", "mergekit", True),
                                                       ("dare_ties", None, False)])
def test_bf16_checkpoints_with_tied_magnitudes(method, tie_order, window, builtin_refs, tmp_path, kernels_path,
                                               monkeypatch):
    """bf16 experts = base + 1e-3 * randn: many magnitudes tie at every TIES threshold; both tie
    orders (mergekit's replays torch's CPU sort) on both merge paths; ``window``: the numpy path
    finds thresholds by sample and counting pass even on these small tensors."""
    from evomm.merging import stream_arrays

    if window:
        monkeypatch.setattr(stream_arrays, "SMALL_TENSOR", 0)
    models, base = builtin_refs
    root = tmp_path / "bf16"
    refs = []
    for i in range(3):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        if i < 2:
            torch.manual_seed(i)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(1e-3 * torch.randn_like(param.float()).to(param.dtype))
        model.save_pretrained(root / f"m{i}")
        refs.append(str(root / f"m{i}"))
    recipe = recipe_for(method, refs[:2], refs[2], dtype="bfloat16")
    if tie_order:
        recipe.method_params["tie_order"] = tie_order
    stream_merge(recipe, tmp_path / "streamed", device="cpu")
    in_memory_default(recipe, tmp_path / "memory", monkeypatch)
    assert_same_weights(tmp_path / "streamed", tmp_path / "memory")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float16"])
def test_sharded_bf16_sources(dtype, sharded_bf16, tmp_path, kernels_path, monkeypatch):
    models, base = sharded_bf16
    recipe = recipe_for("ties", models, base, dtype=dtype)
    stream_merge(recipe, tmp_path / "streamed", device="cpu", max_shard_size="30KB")
    in_memory_default(recipe, tmp_path / "memory", monkeypatch)
    assert_same_weights(tmp_path / "streamed", tmp_path / "memory")
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert config["dtype"] == dtype
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")
    assert next(loaded.parameters()).dtype == getattr(torch, dtype)


def test_tied_embeddings_are_merged_once(tied, tmp_path):
    models, base = tied
    recipe = recipe_for("dare_ties", models, base)
    stream_merge(recipe, tmp_path / "streamed", device="cpu")
    in_memory(recipe, tmp_path / "memory")
    assert_same_weights(tmp_path / "streamed", tmp_path / "memory")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "streamed" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in set(f.keys())


def test_slerp(builtin_refs, tmp_path):
    models, base = builtin_refs
    recipe = Recipe(adapter="llm", method="slerp", models=models[:1], base=base,
                    method_params={"t": 0.35}, adapter_options={"dtype": "float32"})
    stream_merge(recipe, tmp_path / "streamed", device="cpu")
    in_memory(recipe, tmp_path / "memory")
    assert_same_weights(tmp_path / "streamed", tmp_path / "memory")


def test_shards_index_and_side_files(builtin_refs, tmp_path):
    models, base = builtin_refs
    limit = 25_000
    out = stream_merge(recipe_for("ties", models, base), tmp_path / "out", device="cpu", max_shard_size=limit)
    index = json.loads((out / streaming.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    from safetensors import safe_open

    total = 0
    for name in files:
        with safe_open(str(out / name), framework="pt") as f:
            sizes = [f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()]
            assert sum(sizes) <= limit or len(sizes) == 1
            total += sum(sizes)
            assert {k: name for k in f.keys()}.items() <= index["weight_map"].items()
    assert total == index["metadata"]["total_size"]
    assert AutoTokenizer.from_pretrained(out).encode("1 たす 2") == AutoTokenizer.from_pretrained(models[0]).encode("1 たす 2")
    assert not (out / streaming.SINGLE_FILE).exists()


def test_one_tensor_per_source_at_a_time(builtin_refs, tmp_path, monkeypatch):
    """Peak memory: one tensor of each checkpoint per tensor in flight (one per worker), on the
    torch tensors and on the numpy arrays."""
    from evomm.merging import stream_torch
    from evomm.merging.safetensors_io import ArrayReader

    alive, peak = set(), [0]

    def counting(read):
        def wrapper(self, name):
            tensor = read(self, name)
            key = object()
            alive.add(key)
            peak[0] = max(peak[0], len(alive))
            weakref.finalize(tensor, alive.discard, key)
            return tensor
        return wrapper

    monkeypatch.setattr(stream_torch._Reader, "tensor", counting(stream_torch._Reader.tensor))
    monkeypatch.setattr(ArrayReader, "raw", counting(ArrayReader.raw))
    models, base = builtin_refs
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("EVOMM_KERNELS", "torch")
        torch.set_num_threads(1)  # one tensor in flight
        stream_merge(recipe_for("ties", models, base), tmp_path / "one", device="cpu")
        assert peak[0] == 3  # two sources and the base
        torch.set_num_threads(2)  # two tensors merged side by side
        stream_merge(recipe_for("ties", models, base), tmp_path / "two", device="cpu")
        assert peak[0] <= 6
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    monkeypatch.setenv("EVOMM_KERNELS", "numba")
    peak[0] = 0
    monkeypatch.setattr(streaming.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one worker
    stream_merge(recipe_for("ties", models, base), tmp_path / "arrays", device="cpu")
    assert peak[0] == 3


def test_shard_writer_takes_tensors_in_any_order_from_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    from evomm.merging.safetensors_io import ShardWriter

    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    tensors = {f"t{i}": torch.randn(i + 1, 3).to(dtype) for i, dtype in
               enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float32])}
    writer = ShardWriter(tmp_path / "x.safetensors", [(k, names[t.dtype], tuple(t.shape)) for k, t in tensors.items()])
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda k: writer.write(k, tensors[k].reshape(-1).view(torch.uint8).numpy()),
                      reversed(list(tensors))))
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert list(loaded) == list(tensors)
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k]), k


def test_a_failed_merge_leaves_no_shard_behind(builtin_refs, tmp_path, monkeypatch, kernels_path):
    """Tensors are written in any order, so a shard with a hole would look whole: it is removed."""
    from evomm.merging import stream_arrays, stream_torch

    def failing(real):
        def merge(*args, **kwargs):
            if failing.calls > 3:
                raise RuntimeError("merge failed")
            failing.calls += 1
            return real(*args, **kwargs)
        return merge

    failing.calls = 0
    monkeypatch.setattr(stream_torch, "materialize", failing(stream_torch.materialize))
    monkeypatch.setattr(stream_arrays, "merge_arrays", failing(stream_arrays.merge_arrays))
    models, base = builtin_refs
    with pytest.raises(RuntimeError, match="merge failed"):
        stream_merge(recipe_for("ties", models, base), tmp_path / "out", device="cpu")
    assert failing.calls == 4  # some tensors were written before the failure
    assert not (tmp_path / "out" / streaming.SINGLE_FILE).exists()


def test_why_not_streamed(builtin_refs, tmp_path):
    models, base = builtin_refs
    assert why_not_streamed(recipe_for("ties", models, base)) is None
    assert "local folder" in why_not_streamed(recipe_for("ties", ["someone/model", models[1]], base))
    vlm = recipe_for("ties", models, base)
    vlm.adapter = "vlm"
    assert "vlm adapter" in why_not_streamed(vlm)
    routed = recipe_for("ties", models, base)
    routed.route = {"models": [models[1]]}
    assert "routed" in why_not_streamed(routed)
    bin_only = tmp_path / "bin_only"
    shutil.copytree(models[0], bin_only)
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    assert "model.safetensors" in why_not_streamed(recipe_for("ties", [str(bin_only), models[1]], base))
    with pytest.raises(ConfigError, match="cannot be streamed"):
        stream_merge(vlm, tmp_path / "no")


def test_evomm_merge_streams_local_checkpoints(builtin_refs, tmp_path, monkeypatch):
    models, base = builtin_refs
    recipe_path = recipe_for("ties", models, base).save(tmp_path / "recipe.yaml")
    in_memory(Recipe.load(recipe_path), tmp_path / "memory")

    def no_adapter(*args, **kwargs):
        raise AssertionError("the adapter path was taken")

    monkeypatch.setattr(LLMAdapter, "__init__", no_adapter)
    assert cli_main(["merge", str(recipe_path), str(tmp_path / "cli"), "--device", "cpu", "--max-shard-size", "1GB"]) == 0
    monkeypatch.undo()
    assert_same_weights(tmp_path / "cli", tmp_path / "memory")


def test_mergekit_yaml_streams(builtin_refs, tmp_path):
    models, base = builtin_refs
    config = {"merge_method": "ties", "base_model": base, "dtype": "float32",
              "models": [{"model": m, "parameters": {"weight": w, "density": 0.5}} for m, w in zip(models, (0.3, 0.7))]}
    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["merge", str(path), str(tmp_path / "out"), "--device", "cpu"]) == 0
    recipe = Recipe(adapter="llm", method="ties", models=models, base=base, adapter_options={"dtype": "float32"},
                    entries=[Entry(params={"weight": [0.3, 0.7], "density": [0.5, 0.5]})])
    in_memory(recipe, tmp_path / "memory")
    assert_same_weights(tmp_path / "out", tmp_path / "memory")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size(1234) == 1234
    with pytest.raises(ConfigError, match="5GB"):
        parse_size("lots")


def test_unexpected_checkpoint_names_fall_back_to_the_adapter(builtin_refs, tmp_path):
    """A checkpoint the streaming layout does not understand is built by the adapter instead."""
    from safetensors.torch import load_file, save_file

    models, base = builtin_refs
    odd = tmp_path / "odd"
    shutil.copytree(models[0], odd)
    tensors = load_file(odd / "model.safetensors")
    tensors["extra.scale"] = torch.ones(3)  # from_pretrained ignores it; streaming cannot place it
    save_file(tensors, odd / "model.safetensors", metadata={"format": "pt"})
    recipe = recipe_for("ties", [str(odd), models[1]], base)
    with pytest.raises(streaming.NotStreamable, match="extra.scale"):
        stream_merge(recipe, tmp_path / "streamed", device="cpu")
    assert not (tmp_path / "streamed").exists()  # refused before writing anything
    path = recipe.save(tmp_path / "recipe.yaml")
    assert cli_main(["merge", str(path), str(tmp_path / "cli"), "--device", "cpu"]) == 0
    in_memory(recipe, tmp_path / "memory")
    assert_same_weights(tmp_path / "cli", tmp_path / "memory")
