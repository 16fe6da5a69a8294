"""safetensors read and written with numpy alone: the same values and bytes as torch's, and an
`evomm merge` of a mergekit YAML that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from evomm.builtin import resolve
from evomm.cli import main as cli_main
from evomm.merging.safetensors_io import ArrayReader, checkpoint_files, from_float32, read_header, to_float32


def edge_values() -> np.ndarray:
    """Random float32s over many magnitudes, and the ones rounding is decided on: halfway
    cases, subnormals, the largest finite values, infinities and NaNs."""
    g = np.random.default_rng(0)
    random = (g.standard_normal(20000) * 10.0 ** g.integers(-40, 38, 20000)).astype(np.float32)
    bits = g.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    halfway = ((bits & 0xFFFF0000) | 0x8000).view(np.float32)  # exactly between two bfloat16s
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.3895314e38, -3.4028235e38, 65504.0,
                        65520.0, 1e-45, -1e-45, 1.1754942e-38, 5.96e-8, 2.98e-8], np.float32)
    return np.concatenate([random, bits.view(np.float32), halfway, special])


@pytest.mark.parametrize("name, dtype", [("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)])
def test_rounding_equals_torch(name, dtype):
    values = edge_values()
    ours = from_float32(values, name)
    theirs = torch.from_numpy(values).to(dtype)
    back, expected = to_float32(ours, name), theirs.float().numpy()
    number = ~np.isnan(values)  # a NaN stays a NaN; its payload is torch's kernel's choice
    assert np.array_equal(back[number].view(np.uint32), expected[number].view(np.uint32))
    assert np.isnan(back[~number]).all() and np.isnan(expected[~number]).all()
    assert np.array_equal(ours[number].view(np.uint8), theirs.numpy()[number].view(np.uint8)) if name != "BF16" \
        else np.array_equal(ours[number], theirs.view(torch.int16).numpy().view(np.uint16)[number])


def test_reader_gives_the_stored_tensors(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.randn(2, 2).half(),
               "d": torch.arange(5), "e": torch.tensor([True, False])}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    header, start = read_header(tmp_path / "model.safetensors")
    assert set(header) == set(tensors) and start % 8 == 0
    reader = ArrayReader(checkpoint_files(tmp_path))
    for name, tensor in tensors.items():
        assert reader.shape(name) == tuple(tensor.shape)
        raw = reader.raw(name)
        assert np.array_equal(raw.view(np.uint8), tensor.reshape(-1).view(torch.uint8).numpy()), name
        if tensor.is_floating_point():
            assert np.array_equal(reader.float32(name), tensor.float().reshape(-1).numpy()), name


def test_cold_merge_of_a_mergekit_yaml_imports_no_torch(tmp_path):
    """The front door a user times: `evomm merge` of a TIES mergekit YAML in a fresh process
    loads neither torch nor transformers once the architecture's layout is known."""
    models = [resolve("builtin:tiny-llm-a"), resolve("builtin:tiny-llm-b")]
    config = {"merge_method": "ties", "base_model": resolve("builtin:tiny-llm-base"), "dtype": "float32",
              "models": [{"model": m, "parameters": {"weight": w, "density": 0.5}} for m, w in zip(models, (0.3, 0.7))]}
    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["merge", str(path), str(tmp_path / "warm")]) == 0  # learns the layout
    code = ("import sys; from evomm.cli import main; code = main(sys.argv[1:]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code, "merge", str(path), str(tmp_path / "cold")],
                          capture_output=True, text=True, env=os.environ.copy(), check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes()
