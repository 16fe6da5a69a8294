"""Load the models and build the search space a run's ``space`` config asks for."""

from __future__ import annotations

from typing import Any

from evomm.search.space_kinds import space_kind


def build_search(c: dict) -> tuple[Any, Any]:
    """Load the models and build the search space: the selected space kind's ``build``.

    ``space=ps`` searches the merge method's parameters over the adapter's sources; ``dfs``
    routes through ``adapter.models`` (model A first); ``ps_dfs`` routes a parameter-space merge
    (``space.ps_recipe``, model A) through ``space.route_models`` (model B, ...).
    """
    return space_kind(c).build(c)
