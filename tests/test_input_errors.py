"""Mistakes a new user makes end in one clear error, before any model loads (no network here:
the hub probe is simulated)."""

import pytest

from evomm.adapters import availability
from evomm.errors import ConfigError, EvommError, ModelLoadError
from evomm.merging.methods import get_method
from evomm.recipe.recipe import check_settings, fixed_params
from evomm.runner import run

from conftest import compose

NOT_LOADABLE = "adapter.models=[nobody/not-downloaded,nobody/also-not]"


def run_smoke(tmp_path, *overrides):
    return run(compose(["experiment=smoke_llm", f"run_dir={tmp_path / 'run'}", *overrides]))


@pytest.fixture
def no_model_load(monkeypatch):
    """A model load in these tests is a bug: the error must come first."""
    def refuse(c):
        raise AssertionError("models were loaded before the error")

    monkeypatch.setattr("evomm.runner.build_search", refuse)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+merge.params.density=1.5"], r"merge.params.density fixes a parameter that merge.evolve=\['weight', 'density'\] also evolves"),
        (["+merge.params.density=[1.5,1.5]", "merge.evolve=[weight]"], r"merge.params: .*'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.density=[[0.5,1.5],0.5]", "merge.evolve=[weight]"], r"'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.density=1.5", "merge.evolve=[weight]"], r"'density' for source #0 = 1.5 is out of range"),
        (["+merge.params.lambda=nan"], r"'lambda' .*must be finite"),
        (["+merge.granularty=layer"], r"unknown key merge.granularty \(did you mean merge.granularity\?\)"),
        (["merge=dfs", "+merge.repeat=2"], r"unknown key merge.repeat \(did you mean merge.repeats\?\)"),
    ],
)
def test_merge_section_mistakes(tmp_path, no_model_load, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_smoke(tmp_path, *overrides, NOT_LOADABLE)


def test_a_fixed_parameter_applies_to_every_source_or_one_per_source():
    assert fixed_params("ties", {"density": 0.5, "normalize": True}, 2) == {"density": [0.5, 0.5], "normalize": True}
    assert fixed_params("ties", {"density": [0.2, 0.4]}, 2) == {"density": [0.2, 0.4]}
    # a per-layer gradient of another length is one setting, for every source
    assert fixed_params("ties", {"density": [0.2, 0.4, 0.6]}, 2) == {"density": [[0.2, 0.4, 0.6]] * 2}
    check_settings(get_method("ties"), fixed_params("ties", {"density": [0.2, 0.4, 0.6]}, 2), 2, "merge.params")


def test_offline_hub_id_not_in_cache_is_refused_at_once(tmp_path, no_model_load, monkeypatch):
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'nobody/not-downloaded' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        run_smoke(tmp_path, NOT_LOADABLE)


@pytest.mark.parametrize(
    "answer, message",
    [
        ("missing", r"'nobody/not-downloaded' is not on the Hugging Face hub \(misspelt\?"),
        ("unreachable: timed out", r"cannot be fetched: the hub is unreachable: timed out"),
    ],
)
def test_online_hub_id_is_probed_once(tmp_path, no_model_load, monkeypatch, answer, message):
    asked = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(availability, "probe_hub", lambda ref, *a, **k: asked.append(ref) or answer)
    with pytest.raises(ModelLoadError, match=message):
        run_smoke(tmp_path, NOT_LOADABLE)
    assert asked == ["nobody/not-downloaded"]


def test_a_cached_hub_id_is_not_probed(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "hub" / "models--me--cached" / "snapshots" / "abc").mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: pytest.fail("cached: no probe"))
    availability.check_available("me/cached", modality="llm")
    monkeypatch.setattr(availability, "probe_hub", lambda *a, **k: "ok")
    availability.check_available("me/on-the-hub", modality="llm")


def test_a_folder_without_config_json_is_named(tmp_path, no_model_load):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"model folder '.*weights' has no config.json"):
        run_smoke(tmp_path, f"adapter.models=[{tmp_path / 'weights'},builtin:tiny-llm-b]")


def test_single_file_sdxl_without_its_configs_names_the_key(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"single-file SDXL checkpoint.*Set adapter.single_file_config"):
        availability.check_available(str(checkpoint), modality="sdxl")
    availability.check_available(str(checkpoint), modality="sdxl", single_file_config=str(tmp_path))


def test_every_candidate_failing_is_one_error_with_the_first_error(tmp_path, monkeypatch):
    def broken(adapter, recipe):
        raise RuntimeError("the merge broke\nsecond line of detail")

    monkeypatch.setattr("evomm.search.loop.apply_recipe", broken)
    with pytest.raises(EvommError) as info:
        run_smoke(tmp_path)
    message = str(info.value)
    assert "every candidate of generation 0 failed; first error: RuntimeError: the merge broke;" in message
    assert "second line" not in message and "history.jsonl" in message
