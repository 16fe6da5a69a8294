"""One-shot merges streamed from disk, tensor by tensor (``evomm merge`` on local checkpoints).

Rebuilding a recipe does not need a resident model: for a text-LLM recipe whose models are
local safetensors checkpoints (one ``model.safetensors`` or shards with
``model.safetensors.index.json``), every tensor is read from each source with ``safe_open``,
merged by the same engine a search uses (``evomm.merging.engine``), and written straight into
the output shard. Peak memory is one tensor per source plus the merged tensor, and the output
equals the in-memory path (load the adapter, materialise, ``save_pretrained``) bit for bit:
same names, dtype, groups, layer positions and per-tensor seeds.

The output folder holds ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors`` shards of
at most ``max_shard_size`` bytes plus ``model.safetensors.index.json``) and the first source's
config and generation config (with the written dtype), and the tokenizer files of the model the
adapter takes its tokenizer from. ``why_not_streamed`` says when this does not apply (hub ids,
other adapters, routed recipes); ``stream_merge`` raises :class:`NotStreamable` (before writing
anything) for checkpoints whose tensor names need conversion; the caller then uses the adapter
path.

Two mergers do the arithmetic. On the CPU with numba, the task-arithmetic family (TIES, DARE,
task arithmetic) is merged on memory-mapped numpy arrays (``evomm.merging.stream_arrays``) and
this module imports no torch: torch's import alone is about 1.5 s of a cold ``evomm merge``.
Every other case (other methods, a GPU, no numba, float64 checkpoints) goes through the
resident engine's ``materialize`` on torch tensors (``evomm.merging.stream_torch``). Both give
the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evomm.adapters.llm_names import check_sizes, group_t, llm_group
from evomm.adapters.loading import check_dtype, compare_shapes, resolve_ref
from evomm.errors import ConfigError
from evomm.merging.backend import fast_kernels, fused_method
from evomm.merging.methods import get_method
from evomm.merging.safetensors_io import (
    DTYPE_NAMES, FLOATING, INDEX_FILE, SINGLE_FILE, ArrayReader, ShardWriter, checkpoint_files, itemsize, numel,
    parse_size, shards,
)
from evomm.recipe.recipe import Recipe

__all__ = ["DEFAULT_MAX_SHARD", "INDEX_FILE", "NotStreamable", "SINGLE_FILE", "parse_size", "stream_merge",
           "why_not_streamed"]

DEFAULT_MAX_SHARD = "5GB"

# Not copied next to the merged weights: other weight formats and indexes, hidden markers.
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf)$|\.index\.json$")
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab.*|merges\.txt|.*\.model|chat_template.*)$"
)
_ADAPTER_OPTIONS = {"dtype", "device", "tokenizer_from", "require_tokenizer", "device_map"}


class NotStreamable(ConfigError):
    """The recipe must be built by its adapter (raised before anything is written)."""


# ---------------------------------------------------------------------------------------------
# When streaming applies
# ---------------------------------------------------------------------------------------------
def why_not_streamed(recipe: Recipe) -> str | None:
    """Why this recipe needs the adapter path, or None when it can be streamed from disk."""
    found = _local_checkpoints(recipe)
    return found if isinstance(found, str) else None


def _local_checkpoints(recipe: Recipe) -> list[dict[str, Path]] | str:
    """Each model's, then the base's, tensor name -> file; or why the adapter path is needed."""
    if recipe.adapter != "llm":
        return f"the {recipe.adapter} adapter writes its own format"
    if recipe.route:
        return "a routed (data-flow) recipe is a new architecture, built by its adapter"
    unknown = set(recipe.adapter_options) - _ADAPTER_OPTIONS
    if unknown:
        return f"adapter options {sorted(unknown)} are not known to the streaming path"
    files = []
    for ref in [*recipe.models, *([recipe.base] if recipe.base else [])]:
        path = Path(resolve_ref(ref)).expanduser()
        if not path.is_dir():
            return f"'{ref}' is not a local folder (a hub id is loaded by the adapter)"
        found = checkpoint_files(path)
        if found is None:
            return f"'{ref}' has no {SINGLE_FILE} or {INDEX_FILE}"
        files.append(found)
    return files


@dataclass
class _Layout:
    """What the adapter path would merge: parameter names (tied copies once), groups, positions."""

    order: list[str]  # the output's tensors, in the model's state-dict order
    merged: set[str]  # parameters (merged); the rest (persistent buffers) come from source 0
    n_layers: int


def _layout(refs: list[str], names_on_disk: set[str]) -> _Layout | str:
    """The tensor layout of the sources' model, or why it cannot be streamed; sizes checked.

    Building it needs transformers' config and model classes (on the meta device), and in
    transformers 5 importing them costs more than a small merge itself. The result depends only
    on config.json, the names on disk and the transformers version, so it is kept under
    $EVOMM_HOME/layouts, and a later ``evomm merge`` of the same architecture reads the
    config.json files as JSON and skips those imports.
    """
    from importlib.metadata import version

    from evomm.builtin import evomm_home

    raw = [json.loads((Path(r) / "config.json").read_text()) for r in refs]
    key = hashlib.sha256(json.dumps([raw[0], sorted(names_on_disk), version("transformers")],
                                    sort_keys=True).encode()).hexdigest()[:32]
    cached = evomm_home() / "layouts" / f"{key}.json"
    if cached.is_file():
        check_sizes(refs, raw)
        known = json.loads(cached.read_text())
        return known if isinstance(known, str) else _Layout(known["order"], set(known["merged"]), known["n_layers"])
    from evomm.adapters.llm import check_llm_configs  # transformers (and torch): a new architecture only

    layout = _build_layout(check_llm_configs(refs)[0], names_on_disk)
    cached.parent.mkdir(parents=True, exist_ok=True)
    doc = layout if isinstance(layout, str) else {"order": layout.order, "merged": sorted(layout.merged),
                                                    "n_layers": layout.n_layers}
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, cached)  # atomic: a concurrent merge reads the old file or the whole new one
    return layout


def _build_layout(config, names_on_disk: set[str]) -> _Layout | str:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        # names and shapes only: no memory, and no initialisation (40% of the time), but tied
        # weights must be tied, since a tied copy is not merged or written twice
        with torch.device("meta"), _no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()
    except Exception as e:  # noqa: BLE001 - e.g. remote code: the adapter path knows how to load it
        return f"its architecture cannot be built from config.json alone ({type(e).__name__})"
    params = dict(model.named_parameters())  # a tied weight appears once, as the adapter sees it
    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(params)
    state = [n for n in model.state_dict() if n not in aliases]  # what save_pretrained writes
    missing = [n for n in state if n not in names_on_disk]
    if missing:
        return f"the checkpoint names its tensors differently (no {missing[0]})"
    extra = sorted(names_on_disk - set(state) - aliases)
    if extra:
        return f"the checkpoint holds tensors the model does not have ({extra[0]})"
    return _Layout(order=state, merged=set(params), n_layers=int(config.num_hidden_layers))


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4
    return no_init_weights()


# ---------------------------------------------------------------------------------------------
# The merge
# ---------------------------------------------------------------------------------------------
def stream_merge(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    device: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD,
    log: Callable[[str], None] = lambda line: None,
) -> Path:
    """Merge ``recipe`` from its local safetensors checkpoints into ``out_dir``, tensor by tensor."""
    files = _local_checkpoints(recipe)
    if isinstance(files, str):
        raise NotStreamable(f"this recipe cannot be streamed: {files}")
    max_bytes = parse_size(max_shard_size)
    options = recipe.adapter_options
    dtype = DTYPE_NAMES[check_dtype(options.get("dtype", "float32"))]
    device = device if device is not None else options.get("device", "auto")
    tokenizer_from = int(options.get("tokenizer_from", 0))
    if not 0 <= tokenizer_from < len(recipe.models):
        raise ConfigError(f"adapter.tokenizer_from must index the recipe's models (0..{len(recipe.models) - 1})")
    models = [str(Path(resolve_ref(r)).expanduser()) for r in recipe.models]
    base = str(Path(resolve_ref(recipe.base)).expanduser()) if recipe.base else None
    refs = models + ([base] if base else [])
    layout = _layout(refs, set(files[0]))
    if isinstance(layout, str):
        raise NotStreamable(f"this recipe cannot be streamed: {layout}")
    params = _check_every_tensor(recipe, layout)

    readers = [ArrayReader(f) for f in files]
    shapes = [{n: r.shape(n) for n in layout.order if n in r.files} for r in readers]
    for ref, other in zip(refs[1:], shapes[1:]):
        compare_shapes(refs[0], shapes[0], ref, other)
    entries = []
    for name in layout.order:
        stored = readers[0].dtype(name)
        entries.append((name, dtype if stored in FLOATING else stored, shapes[0][name]))
    parts = shards(entries, max_bytes)
    names = (
        [SINGLE_FILE] if len(parts) == 1
        else [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if _on_arrays(recipe, params, readers, layout, device):
            from evomm.merging.stream_arrays import ArrayMerge  # numba

            merge = ArrayMerge(recipe, params, readers, dtype, n_sources=len(models))
        else:
            from evomm.merging.stream_torch import TensorMerge

            merge = TensorMerge(recipe, layout.merged, layout.n_layers, files, dtype, device, len(models),
                                bool(base), stack)
        _write_shards(out_dir, names, parts, merge)
    for file_name in names:
        log(f"  wrote {file_name}")
    if len(parts) > 1:
        index = {
            "metadata": {"total_size": sum(numel(s) * itemsize(d) for _, d, s in entries)},
            "weight_map": {name: file for file, part in zip(names, parts) for name, _, _ in part},
        }
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    _copy_side_files(Path(models[0]), Path(models[tokenizer_from]), out_dir, dtype)
    return out_dir


def _check_every_tensor(recipe: Recipe, layout: _Layout) -> dict[str, dict]:
    """Every merged tensor's parameters, checked before anything is read or written (a check
    across parameters, such as DELLA's density +/- epsilon, depends on the layer's values):
    tensor name -> its parameters, defaults filled in (one dict per distinct set)."""
    spec = get_method(recipe.method)
    n, seen, by_name = len(recipe.models), {}, {}
    for name in layout.order:
        if name not in layout.merged:
            continue
        group = llm_group(name)
        params = recipe.params_for(group, name, group_t(group, layout.n_layers))
        key = repr(sorted(params.items()))
        if key not in seen:
            try:
                seen[key] = spec.resolved(params, n)
            except ConfigError as e:
                raise ConfigError(f"{e} (tensor {name}, group {group})") from None
        by_name[name] = seen[key]
    return by_name


def _on_arrays(recipe: Recipe, params: dict[str, dict], readers: list[ArrayReader], layout: _Layout,
               device: str) -> bool:
    """Whether the numpy arrays merge this recipe (else the resident engine on torch tensors): the
    CPU with numba, a method with a fused kernel, and float16/bfloat16/float32 checkpoints."""
    if device not in ("auto", "cpu") or not fast_kernels():
        return False
    if not all(fused_method(recipe.method, p) for p in params.values()):
        return False
    return all(r.dtype(n) != "F64" for r in readers for n in layout.order if n in r.files)


def _write_shards(out_dir: Path, names: list[str], parts: list[list], merge) -> None:
    """``merge.workers`` threads, each merging one tensor (largest first) and writing it to its
    place in its shard; peak memory stays one tensor per source and worker."""
    with ExitStack() as files_open, merge.session(), ThreadPoolExecutor(max_workers=merge.workers) as pool:
        jobs = []
        for file_name, part in zip(names, parts):
            writer = ShardWriter(out_dir / file_name, part)
            files_open.callback(writer.close)
            jobs += [(numel(shape), writer, name, out_dtype) for name, out_dtype, shape in part]
        jobs.sort(key=lambda job: -job[0])

        def merge_and_write(writer: ShardWriter, name: str, out_dtype: str) -> None:
            writer.write(name, merge(name, out_dtype))

        futures = [pool.submit(merge_and_write, writer, name, out_dtype) for _, writer, name, out_dtype in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _copy_side_files(first: Path, tokenizer_source: Path, out_dir: Path, dtype: str) -> None:
    """Config and generation config from the first source (dtype updated), tokenizer files."""
    for folder, wanted in ((first, lambda n: not _TOKENIZER_FILE.match(n)), (tokenizer_source, _TOKENIZER_FILE.match)):
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and not _WEIGHT_FILE.search(path.name) and wanted(path.name):
                shutil.copyfile(path, out_dir / path.name)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["dtype"] = {st: name for name, st in DTYPE_NAMES.items()}[dtype]
        config.pop("torch_dtype", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
