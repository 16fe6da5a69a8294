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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from evomm.merging.slots import TensorSlot
from evomm.adapters.loading import compare_shapes, pick_device, resolve_ref, torch_dtype
from evomm.errors import ConfigError
from evomm.merging.engine import materialize
from evomm.merging.methods import get_method
from evomm.recipe.recipe import Recipe

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD = "5GB"

# Not copied next to the merged weights: other weight formats and indexes, hidden markers.
_WEIGHT_FILE = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf)$|\.index\.json$")
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab.*|merges\.txt|.*\.model|chat_template.*)$"
)
# safetensors dtype names (the header's "dtype" field)
_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_ADAPTER_OPTIONS = {"dtype", "device", "tokenizer_from", "require_tokenizer", "device_map"}


class NotStreamable(ConfigError):
    """The recipe must be built by its adapter (raised before anything is written)."""


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` / ``500MB`` / ``1GiB`` / an integer."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ConfigError(f"max shard size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot read the size {size!r}; write e.g. 5GB, 500MB or 1GiB")
    number, prefix, binary = match.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if value < 1:
        raise ConfigError(f"max shard size must be positive, got {size!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------
def checkpoint_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> safetensors file of a local checkpoint folder, or None if it has none."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())
        return {name: folder / file for name, file in index["weight_map"].items()}
    if (folder / SINGLE_FILE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SINGLE_FILE), framework="pt") as f:
            return {name: folder / SINGLE_FILE for name in f.keys()}
    return None


class _Reader:
    """Open safetensors files of one checkpoint, one handle per file, read tensor by tensor."""

    def __init__(self, files: dict[str, Path], stack: ExitStack):
        self.files, self.stack, self.handles = files, stack, {}

    def _handle(self, name: str):
        from safetensors import safe_open

        path = self.files[name]
        if path not in self.handles:
            self.handles[path] = self.stack.enter_context(safe_open(str(path), framework="pt"))
        return self.handles[path]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def tensor(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name)


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

    from evomm.adapters.llm import check_llm_configs, check_sizes
    from evomm.builtin import evomm_home

    raw = [json.loads((Path(r) / "config.json").read_text()) for r in refs]
    key = hashlib.sha256(json.dumps([raw[0], sorted(names_on_disk), version("transformers")],
                                    sort_keys=True).encode()).hexdigest()[:32]
    cached = evomm_home() / "layouts" / f"{key}.json"
    if cached.is_file():
        check_sizes(refs, raw)
        known = json.loads(cached.read_text())
        return known if isinstance(known, str) else _Layout(known["order"], set(known["merged"]), known["n_layers"])
    layout = _build_layout(check_llm_configs(refs)[0], names_on_disk)
    cached.parent.mkdir(parents=True, exist_ok=True)
    doc = layout if isinstance(layout, str) else {"order": layout.order, "merged": sorted(layout.merged),
                                                    "n_layers": layout.n_layers}
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, cached)  # atomic: a concurrent merge reads the old file or the whole new one
    return layout


def _build_layout(config, names_on_disk: set[str]) -> _Layout | str:
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
# Writing safetensors shards tensor by tensor
# ---------------------------------------------------------------------------------------------
class _ShardWriter:
    """One safetensors file whose header (names, dtypes, shapes) is known in advance.

    Every tensor's place in the file follows from the header, so tensors can be written in any
    order and from several threads at once (``os.pwrite``): a worker writes what it merged
    as soon as it is done and keeps nothing waiting for the tensors before it.
    """

    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        spans: dict[str, tuple[int, int]] = {}
        for name, dtype, shape in entries:
            nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            spans[name] = (offset, nbytes)
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
        start = 8 + len(blob)
        self.path = path
        self.spans = {name: (start + at, nbytes) for name, (at, nbytes) in spans.items()}
        self.unwritten = set(self.spans)
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, len(blob).to_bytes(8, "little") + blob, 0)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        at, nbytes = self.spans[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != nbytes:
            raise RuntimeError(f"tensor {name} has {data.nbytes} bytes, the header says {nbytes}")
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            view = view[os.pwrite(self.fd, view, at + len(data) - len(view)):]
        with self.lock:
            self.unwritten.discard(name)

    def close(self) -> None:
        os.close(self.fd)
        if self.unwritten:  # only after an error elsewhere: do not leave a file that looks whole
            self.path.unlink(missing_ok=True)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _shards(entries, max_bytes: int) -> list[list]:
    """Cut the tensor list into consecutive shards of at most ``max_bytes`` (one tensor may exceed)."""
    shards: list[list] = [[]]
    size = 0
    for entry in entries:
        nbytes = _numel(entry[2]) * torch.empty((), dtype=entry[1]).element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


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
    dtype = torch_dtype(options.get("dtype", "float32"))
    compute = pick_device(device if device is not None else options.get("device", "auto"))
    tokenizer_from = int(options.get("tokenizer_from", 0))
    if not 0 <= tokenizer_from < len(recipe.models):
        raise ConfigError(f"adapter.tokenizer_from must index the recipe's models (0..{len(recipe.models) - 1})")
    models = [str(Path(resolve_ref(r)).expanduser()) for r in recipe.models]
    base = str(Path(resolve_ref(recipe.base)).expanduser()) if recipe.base else None
    refs = models + ([base] if base else [])
    layout = _layout(refs, set(files[0]))
    if isinstance(layout, str):
        raise NotStreamable(f"this recipe cannot be streamed: {layout}")
    _check_every_tensor(recipe, layout)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        readers = [_Reader(f, stack) for f in files]
        shapes = [{n: r.shape(n) for n in layout.order if n in r.files} for r in readers]
        for ref, other in zip(refs[1:], shapes[1:]):
            compare_shapes(refs[0], shapes[0], ref, other)
        entries = []
        for name in layout.order:
            stored = readers[0]._handle(name).get_slice(name).get_dtype()
            floating = stored in ("F32", "F16", "BF16", "F64")
            entries.append((name, dtype if floating else _torch_dtype_of(stored), shapes[0][name]))
        shards = _shards(entries, max_bytes)
        names = (
            [SINGLE_FILE] if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        merge = _TensorMerge(recipe, layout, readers, dtype, compute, n_sources=len(models), has_base=bool(base))
        _write_shards(out_dir, names, shards, merge, workers=max(1, torch.get_num_threads()) if compute.type == "cpu" else 1)
        for file_name in names:
            log(f"  wrote {file_name}")
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(_numel(s) * torch.empty((), dtype=d).element_size() for _, d, s in entries)},
                "weight_map": {name: file for file, shard in zip(names, shards) for name, _, _ in shard},
            }
            (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    _copy_side_files(Path(models[0]), Path(models[tokenizer_from]), out_dir, dtype)
    return out_dir


def _check_every_tensor(recipe: Recipe, layout: _Layout) -> None:
    """Every merged tensor's parameters, checked before anything is read or written (a check
    across parameters, such as DELLA's density +/- epsilon, depends on the layer's values)."""
    from evomm.adapters.llm import group_t, llm_group

    spec = get_method(recipe.method)
    n, seen = len(recipe.models), set()
    for name in layout.order:
        if name not in layout.merged:
            continue
        group = llm_group(name)
        params = recipe.params_for(group, name, group_t(group, layout.n_layers))
        key = repr(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        try:
            spec.check_params(spec.with_defaults(params, n), n)
        except ConfigError as e:
            raise ConfigError(f"{e} (tensor {name}, group {group})") from None


class _TensorMerge:
    """One tensor's merge from the open checkpoints (a persistent buffer: source 0's copy)."""

    def __init__(self, recipe: Recipe, layout: _Layout, readers: list[_Reader], dtype: torch.dtype,
                 compute: torch.device, n_sources: int, has_base: bool):
        self.recipe, self.layout, self.readers, self.dtype = recipe, layout, readers, dtype
        self.compute, self.n_sources, self.has_base = compute, n_sources, has_base

    def __call__(self, name: str, out_dtype: torch.dtype) -> torch.Tensor:
        from evomm.adapters.llm import group_t, llm_group

        if name not in self.layout.merged:  # a persistent buffer: the target's (source 0's)
            return self.readers[0].tensor(name).to(out_dtype)
        # As from_pretrained(dtype=...) loads them: each source cast to the adapter dtype.
        tensors = [r.tensor(name).to(self.dtype) for r in self.readers]
        group = llm_group(name)
        target = torch.empty(tensors[0].shape, dtype=self.dtype, device=self.compute)
        slot = TensorSlot(
            name=name, group=group, t=group_t(group, self.layout.n_layers), target=target,
            sources=tensors[:self.n_sources], base=tensors[self.n_sources] if self.has_base else None,
        )
        materialize([slot], self.recipe, threads=1)
        return target


def _write_shards(out_dir: Path, names: list[str], shards: list[list], merge: _TensorMerge, workers: int) -> None:
    """CPU: as many workers as torch has threads, each merging one tensor single-threaded and
    writing it to its place in its shard; peak memory stays one tensor per source and worker."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ExitStack() as files_open, ThreadPoolExecutor(max_workers=workers) as pool:
            writers = []
            for file_name, shard in zip(names, shards):
                writers.append(_ShardWriter(out_dir / file_name, shard))
                files_open.callback(writers[-1].close)

            def merge_and_write(writer: _ShardWriter, name: str, out_dtype: torch.dtype) -> None:
                writer.write(name, merge(name, out_dtype))

            futures = [pool.submit(merge_and_write, writer, name, out_dtype)
                       for writer, shard in zip(writers, shards) for name, out_dtype, _ in shard]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        torch.set_num_threads(previous)


def _torch_dtype_of(name: str) -> torch.dtype:
    for dtype, st in _ST_DTYPES.items():
        if st == name:
            return dtype
    raise ConfigError(f"unsupported tensor dtype {name} in the checkpoint")


def _copy_side_files(first: Path, tokenizer_source: Path, out_dir: Path, dtype: torch.dtype) -> None:
    """Config and generation config from the first source (dtype updated), tokenizer files."""
    for folder, wanted in ((first, lambda n: not _TOKENIZER_FILE.match(n)), (tokenizer_source, _TOKENIZER_FILE.match)):
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith(".") and not _WEIGHT_FILE.search(path.name) and wanted(path.name):
                shutil.copyfile(path, out_dir / path.name)
    config_path = out_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["dtype"] = _DTYPE_NAMES[dtype]
        config.pop("torch_dtype", None)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
