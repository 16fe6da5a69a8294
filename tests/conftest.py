"""Test-wide setup: no network, W&B offline, every cache and run directory under tmp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Set before anything imports huggingface_hub / wandb, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models run faster on one thread than on two busy cores (thread start-up dominates).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# The toy-world trainers are scripts, not part of the package; tests that check them import them.
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(scope="session", autouse=True)
def _evomm_home(tmp_path_factory):
    """Built-in models are built once per test session into a private EVOMM_HOME."""
    home = tmp_path_factory.mktemp("evomm_home")
    old = os.environ.get("EVOMM_HOME")
    os.environ["EVOMM_HOME"] = str(home)
    os.environ["WANDB_DIR"] = str(home / "wandb")
    os.environ["WANDB_CACHE_DIR"] = str(home / "wandb-cache")
    os.environ["WANDB_CONFIG_DIR"] = str(home / "wandb-config")
    os.environ["HF_HOME"] = str(home / "hf")
    yield home
    if old is None:
        os.environ.pop("EVOMM_HOME", None)
    else:
        os.environ["EVOMM_HOME"] = old


def compose(overrides: list[str]):
    """Compose the real conf/ with overrides, as train.py does (no Hydra run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


@pytest.fixture
def compose_cfg():
    return compose


# The four smoke runs, once per test session: the run contract (tests/test_run_contract.py) and the
# modality's own tests read the same run directories.
def _smoke_run(tmp_path_factory, name: str, *overrides: str) -> dict:
    from evomm.runner import run

    run_dir = tmp_path_factory.mktemp(name) / "run"
    return run(compose([*overrides, f"run_dir={run_dir}"]))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "smoke_llm", "experiment=smoke_llm", "logger=wandb")


@pytest.fixture(scope="session")
def vlm_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "smoke_vlm", "experiment=smoke_vlm")


@pytest.fixture(scope="session")
def sdxl_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "smoke_sdxl", "experiment=smoke_sdxl")


@pytest.fixture(scope="session")
def dfs_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "dfs", "experiment=smoke_llm", "space=dfs", "final_eval.baselines=null")


def without_seconds(history: list[dict]) -> list[dict]:
    """History entries minus their wall-clock ``seconds``: what must match between two runs."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def torchrun_train(tmp_path, overrides: list[str], timeout: int = 300):
    """``torchrun --nproc_per_node 2 train.py OVERRIDES`` (gloo on the CPU), each rank in
    ``tmp_path/rank<N>``; the finished process (rank 0's run directory is ``tmp_path/rank0``)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
         *overrides, f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}",
         "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture
def no_model_load(monkeypatch):
    """A model load in a config-error test is a bug: the error must come first."""
    def refuse(c):
        raise AssertionError("models were loaded before the error")

    monkeypatch.setattr("evomm.runner.build_search", refuse)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread than fighting for busy cores (a module's tests)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
