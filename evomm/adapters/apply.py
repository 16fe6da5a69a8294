"""Writing a recipe (or one source) into an adapter's resident model.

Parameter-space recipes go through the merge engine, slot by slot; an adapter that does more
(routing) defines ``apply(recipe)`` / ``show_source(index)`` itself and is asked first.
"""

from __future__ import annotations

from typing import Any

from evomm.merging.engine import materialize, write_source


def apply_recipe(adapter: Any, recipe: Any) -> None:
    """Make the adapter's resident model the recipe's model."""
    apply = getattr(adapter, "apply", None)
    if apply is not None:
        apply(recipe)
    else:
        materialize(adapter.slots(), recipe)


def show_source(adapter: Any, index: int | None) -> None:
    """Make the resident model source ``index`` (None: the base), for the comparison table."""
    show = getattr(adapter, "show_source", None)
    if show is not None:
        show(index)
    else:
        write_source(adapter.slots(), index)
