"""Model cards (merged/README.md) and `evomm push` (without the network)."""

from __future__ import annotations

import json
import re

import huggingface_hub
import pytest
import yaml

from evomm.cli import main as cli_main
from evomm.errors import ConfigError
from evomm.tracking.results import results_markdown
from evomm.interop.hub import files_to_push, find_token, push
from evomm.recipe.recipe import Entry, Recipe
from evomm.tracking.model_card import KNOWN_LICENSES, front_matter, source_license, write_model_card

ROWS = [
    {"name": "evolved", "kind": "evolved", "detail": "", "metrics": {"fitness": 0.55, "accuracy": 0.55}},
    {"name": "a", "kind": "source", "detail": "", "metrics": {"fitness": 0.31, "accuracy": 0.31}},
    {"name": "ties", "kind": "baseline", "detail": "", "metrics": {"fitness": 0.42, "accuracy": 0.42}},
]
CONFIG = {
    "experiment_name": "evollm_test",
    "seed": 7,
    "merge": {"method": "ties", "params": {"normalize": True}},
    "space": {"name": "ps", "granularity": "layer", "group_size": 2, "evolve": None,
              "bounds": {"weight": [0, 1.5], "t": [0.0, 1.0]}},
    "optimizer": {"name": "cmaes", "popsize": 6, "generations": 3, "sigma0": 0.1667, "x0": 0.5},
    "task": {"name": "toy_arith", "fitness_samples": 28, "heldout_samples": 1000},
}


def local_model(path, license=None, config_license=None):
    path.mkdir(parents=True)
    config = {"model_type": "llama"}
    if config_license:
        config["license"] = config_license
    (path / "config.json").write_text(json.dumps(config))
    if license:
        (path / "README.md").write_text(f"---\nlicense: {license}\nlanguage: [ja]\n---\n# a model\n")
    return str(path)


def recipe_of(models, base=None):
    return Recipe(
        adapter="llm", method="ties", models=models, base=base, method_params={"normalize": True},
        entries=[Entry(params={"weight": [0.25, 0.75], "density": [0.5, 0.6]}, groups=["embed", "norm", "head"]),
                 Entry(params={"weight": [0.1, 0.9], "density": [0.3, 0.4]}, groups=["layers.0", "layers.1"])],
    )


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with a saved model in merged/ (file contents do not matter to the card or push)."""
    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (run / "merged" / name).write_text("{}")
    (run / "merged" / ".complete").write_text("ok")  # hidden files stay home
    (run / "merged" / "best_recipe.yaml").write_text("stale copy")  # replaced by the run's own
    recipe_of(["org/a", "org/b"], base="org/base").save(run / "best_recipe.yaml")
    (run / "results.json").write_text(json.dumps(ROWS))
    (run / "history.jsonl").write_text("".join(
        json.dumps({"generation": g, "index": i, "fitness": None if (g, i) == (1, 2) else 0.1 * i, "error": None})
        + "\n" for g in range(3) for i in range(6)))
    return run


def card_parts(text):
    meta = front_matter(text)
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return meta, blocks


def test_card_holds_sources_method_search_recipe_results_and_rebuild(run_dir, tmp_path):
    a = local_model(tmp_path / "src_a", license="apache-2.0")
    b = local_model(tmp_path / "src_b", config_license="apache-2.0")
    base = local_model(tmp_path / "src_base", license="apache-2.0")
    recipe = recipe_of([a, b], base=base)
    path = write_model_card(run_dir, recipe, ROWS, CONFIG)
    assert path == run_dir / "merged" / "README.md"
    text = path.read_text()
    meta, blocks = card_parts(text)
    assert meta["license"] == "apache-2.0"  # every source agrees
    assert meta["tags"][:2] == ["merge", "evomm"] and "ties" in meta["tags"]
    assert "base_model" not in meta  # local paths are not hub ids
    assert meta["pipeline_tag"] == "text-generation"
    for role, ref, where in (("source 0", a, "model card"), ("source 1", b, "config"), ("base", base, "model card")):
        assert f"| {role} | `{ref}` | apache-2.0 ({where}) |" in text
    assert "- merge method: `ties`" in text and "`normalize=True`" in text
    assert "- granularity: `layer`, 2 layer(s) per unit" in text
    # evolve: null is the method's own parameters; a range not given is the name's default
    assert "- evolved per unit: weight, density (bounds {'weight': [0, 1.5], 'density': [0.1, 1.0]})" in text
    assert "- optimizer: `cmaes`" in text
    assert "- generations: 3, population size: 6" in text  # read from history.jsonl
    assert "- evaluations: 18 (1 failed)" in text
    assert "- task: `toy_arith`" in text and "fitness split: `fitness`; results on the held-out split `heldout`" in text
    assert len(blocks) == 1 and Recipe.from_dict(yaml.safe_load(blocks[0])).to_dict() == recipe.to_dict()
    assert results_markdown(ROWS).strip() in text
    assert "evomm merge best_recipe.yaml OUT_DIR" in text
    assert "evomm export-mergekit" in text


def test_card_of_a_run_written_before_the_space_group_reads_its_merge_section(run_dir, tmp_path):
    old = {**CONFIG, "merge": {"method": "ties", "granularity": "layer_filter", "group_size": 4, "filters": ["mlp"],
                               "evolve": ["weight"], "bounds": {"weight": [0.0, 1.0]}, "params": {}}}
    del old["space"]
    text = write_model_card(run_dir, recipe_of([local_model(tmp_path / "a"), local_model(tmp_path / "b")]), [], old).read_text()
    assert "- granularity: `layer_filter`, 4 layer(s) per unit, filters ['mlp']" in text
    assert "- evolved per unit: weight (bounds {'weight': [0.0, 1.0]})" in text


def test_card_for_hub_sources_lists_base_models_and_known_licences(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # nothing cached: the table decides
    models = ["augmxnt/shisa-gamma-7b-v1", "WizardLMTeam/WizardMath-7B-V1.1"]
    recipe = recipe_of(models, base="mistralai/Mistral-7B-v0.1")
    text = write_model_card(run_dir, recipe, [], {}).read_text()
    meta, _ = card_parts(text)
    assert meta["base_model"] == [*models, "mistralai/Mistral-7B-v0.1"]
    assert meta["base_model_relation"] == "merge"
    assert "license" not in meta  # the sources' licences differ
    assert f"| source 1 | `{models[1]}` | {KNOWN_LICENSES[models[1]]} (known-licence table) |" in text
    assert "No final evaluation was run." in text


def test_source_licence_lookup(tmp_path):
    assert source_license(local_model(tmp_path / "m1", license="mit")) == ("mit", "model card")
    assert source_license(local_model(tmp_path / "m2", config_license="cc-by-4.0")) == ("cc-by-4.0", "config")
    assert source_license(local_model(tmp_path / "m3")) == ("unknown", "")
    other = tmp_path / "m4"
    local_model(other)
    (other / "README.md").write_text("---\nlicense: other\nlicense_name: my-licence\n---\n")
    assert source_license(str(other)) == ("other (my-licence)", "model card")
    assert source_license("someone/never-heard-of") == ("unknown", "")


def test_source_licence_from_the_local_hub_cache(tmp_path, monkeypatch):
    """A hub id whose card was downloaded before: its cached README.md wins over the table."""
    cache = tmp_path / "hub"
    repo = cache / "models--mistralai--Mistral-7B-v0.1"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert source_license("mistralai/Mistral-7B-v0.1") == ("cc-by-nc-4.0", "model card")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert source_license("mistralai/Mistral-7B-v0.1") == (KNOWN_LICENSES["mistralai/Mistral-7B-v0.1"], "known-licence table")


# ---- push ----------------------------------------------------------------------------------
class RecordingApi:
    """Stands in for huggingface_hub.HfApi at the network boundary: records what push asks for."""

    calls: list = []

    def __init__(self, token=None):
        RecordingApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs["folder_path"])
        RecordingApi.calls.append(("upload_folder", kwargs, sorted(p.name for p in folder.iterdir())))


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)


def test_dry_run_lists_the_files_and_uploads_nothing(run_dir, no_token, capsys):
    merged = run_dir / "merged"
    expected = [merged / "config.json", merged / "model.safetensors", merged / "tokenizer.json",
                merged / "README.md", run_dir / "best_recipe.yaml", run_dir / "results.json"]
    assert files_to_push(run_dir) == expected
    assert cli_main(["push", str(run_dir), "me/evolved", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload 6 file(s) to me/evolved" in out
    assert "README.md  <-" in out and "written from the run directory" in out
    assert RecordingApi.calls == [] and not (merged / "README.md").exists()


def test_push_without_a_token_says_how_to_log_in(run_dir, no_token, capsys):
    assert find_token() is None
    with pytest.raises(ConfigError, match=r"hf auth login.*HF_TOKEN"):
        push(run_dir, "me/evolved")
    assert cli_main(["push", str(run_dir), "me/evolved"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "HF_TOKEN" in err
    assert RecordingApi.calls == []  # nothing was created or uploaded
    assert not (run_dir / "merged" / "README.md").exists()


def test_push_uploads_merged_with_card_recipe_and_results(run_dir, no_token, tmp_path, monkeypatch):
    token_file = tmp_path / "hf_home" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text("hf_cached_token\n")  # a logged-in cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    files, url = push(run_dir, "me/evolved", private=True)
    assert url == "https://huggingface.co/me/evolved"
    kinds = [c[0] for c in RecordingApi.calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert RecordingApi.calls[0][1] == "hf_cached_token"
    assert RecordingApi.calls[1][2]["exist_ok"] is True and RecordingApi.calls[1][2]["private"] is True
    upload, uploaded = RecordingApi.calls[2][1], RecordingApi.calls[2][2]
    assert upload["repo_id"] == "me/evolved" and upload["folder_path"] == str(run_dir / "merged")
    assert {"README.md", "best_recipe.yaml", "results.json", "model.safetensors"} <= set(uploaded)
    assert (run_dir / "merged" / "best_recipe.yaml").read_text() == (run_dir / "best_recipe.yaml").read_text()
    assert "| evolved | evolved | 0.5500 |" in (run_dir / "merged" / "README.md").read_text()


def test_push_refuses_offline_mode_and_bad_input(run_dir, no_token, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_env_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        push(run_dir, "me/evolved")
    with pytest.raises(ConfigError, match="not a hub repo id"):
        push(run_dir, "me/evolved/extra", dry_run=True)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no saved model.*evomm merge"):
        files_to_push(empty)
    assert RecordingApi.calls == []
