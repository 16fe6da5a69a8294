"""The ``evomm`` command.

    evomm merge CONFIG OUT_DIR     rebuild a model from best_recipe.yaml, or merge a mergekit YAML

Mistakes in the input are reported on one line (``evomm: error: ...``, exit status 2), never
as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomm.errors import ConfigError, EvommError


def quiet_libraries() -> None:
    """Hide per-file progress bars of transformers / diffusers; evomm prints its own progress."""
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def read_recipe(path: Path):
    """An evomm recipe or a mergekit config, as a Recipe."""
    from evomm.merging.mergekit_config import is_mergekit_config, recipe_from_mergekit
    from evomm.merging.recipe import Recipe, load_yaml

    data = load_yaml(path)
    if is_mergekit_config(data):
        return recipe_from_mergekit(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping: an evomm recipe or a mergekit config")
    return Recipe.from_dict(data)


def merge_to_dir(recipe, out_dir: Path, device: str | None = None) -> Path:
    """Load the recipe's sources, write its merge into the target, save it in standard format."""
    from evomm.adapters import adapter_for_recipe
    from evomm.adapters.base import apply_recipe
    from evomm.merging.recipe import check_recipe

    check_recipe(recipe)  # every mistake surfaces here, before any model loads
    overrides = {"require_tokenizer": recipe.adapter_options.get("require_tokenizer", False)} if recipe.adapter == "llm" else {}
    adapter = adapter_for_recipe(recipe, device=device, **overrides)
    apply_recipe(adapter, recipe)
    adapter.save_merged(Path(out_dir))
    return Path(out_dir)


def cmd_merge(args: argparse.Namespace) -> int:
    recipe = read_recipe(Path(args.config))
    out = merge_to_dir(recipe, Path(args.out_dir), device=args.device)
    print(f"wrote {out} ({recipe.method} of {len(recipe.models)} model(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evomm", description="Evolve and rebuild model-merge recipes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="rebuild best_recipe.yaml, or run a mergekit YAML, into OUT_DIR")
    p.add_argument("config", help="an evomm recipe (best_recipe.yaml) or a mergekit YAML")
    p.add_argument("out_dir", help="where to write the merged model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's, else auto)")
    p.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except EvommError as e:
        print(f"evomm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
