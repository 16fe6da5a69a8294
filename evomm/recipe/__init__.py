"""The recipe as plain data (torch-free): what to merge, how, and the optional DFS route."""

from evomm.recipe.recipe import Entry, Recipe, load_yaml

__all__ = ["Entry", "Recipe", "load_yaml"]
