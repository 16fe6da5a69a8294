"""The package list in pyproject.toml names every package of the tree (a wheel holds only those),
and tasks/ installs as evomm.tasks, not as a top-level `tasks`."""

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_every_package_folder_is_listed_and_tasks_is_evomm_tasks():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "evomm").rglob("__init__.py")}
    assert found - listed == set(), "packages missing from pyproject.toml"
    assert config["package-dir"] == {"evomm.tasks": "tasks"}
    assert "evomm.tasks" in listed and not any(p == "tasks" or p.startswith("tasks.") for p in listed)
