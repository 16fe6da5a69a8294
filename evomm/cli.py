"""The ``evomm`` command.

    evomm merge CONFIG OUT_DIR     rebuild a model from best_recipe.yaml, or merge a mergekit YAML
    evomm report RUN_DIR...        summarise a run (or compare several) from its files; redraw plots
    evomm export-mergekit RECIPE   write a text-LLM recipe as a mergekit YAML config
    evomm push RUN_DIR REPO_ID     upload merged/ with its model card, recipe and results to the hub

Mistakes in the input are reported on one line (``evomm: error: ...``, exit status 2), never
as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomm.errors import ConfigError, EvommError
from evomm.quiet import quiet_libraries


def read_recipe(path: Path):
    """An evomm recipe or a mergekit config, as a Recipe."""
    from evomm.interop.mergekit_config import is_mergekit_config, recipe_from_mergekit
    from evomm.recipe.recipe import Recipe, load_yaml

    data = load_yaml(path)
    if is_mergekit_config(data):
        return recipe_from_mergekit(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping: an evomm recipe or a mergekit config")
    return Recipe.from_dict(data)


def merge_to_dir(recipe, out_dir: Path, device: str | None = None, max_shard_size: str | int | None = None) -> Path:
    """Build the recipe's model and save it in standard format.

    Text-LLM recipes over local safetensors checkpoints are streamed tensor by tensor from disk
    (``evomm.merging.streaming``: peak memory one tensor per source, sharded output); anything
    else (hub ids, VLM/SDXL recipes, routes) loads the adapter, materialises and saves.
    """
    from evomm.recipe.recipe import check_recipe
    from evomm.merging.streaming import DEFAULT_MAX_SHARD, NotStreamable, stream_merge

    check_recipe(recipe)  # every mistake surfaces here, before any model loads
    try:
        return stream_merge(recipe, Path(out_dir), device=device, max_shard_size=max_shard_size or DEFAULT_MAX_SHARD)
    except NotStreamable:
        pass  # hub ids, other adapters, names that need the loader's conversion: the adapter path
    from evomm.adapters import adapter_for_recipe  # torch and transformers: only now
    from evomm.adapters.apply import apply_recipe

    _check_refs(recipe)
    overrides = {"require_tokenizer": recipe.adapter_options.get("require_tokenizer", False)} if recipe.adapter == "llm" else {}
    adapter = adapter_for_recipe(recipe, device=device, **overrides)
    apply_recipe(adapter, recipe)
    adapter.save_merged(Path(out_dir))
    return Path(out_dir)


def _check_refs(recipe) -> None:
    """Every model the adapter will load can be found (a local folder with its config, a cached
    or reachable hub id), said in seconds rather than after the hub client's retries."""
    from evomm import plugins
    from evomm.adapters.availability import check_all_available

    modality = getattr(plugins.load_class("adapter", recipe.adapter), "modality", None)
    refs = [(ref, "model") for ref in [*recipe.models, *((recipe.route or {}).get("models") or [])]]
    if recipe.base:
        refs.append((recipe.base, "base model"))
    check_all_available(refs, modality, recipe.adapter_options.get("single_file_config"))


def cmd_merge(args: argparse.Namespace) -> int:
    recipe = read_recipe(Path(args.config))
    out = merge_to_dir(recipe, Path(args.out_dir), device=args.device, max_shard_size=args.max_shard_size)
    print(f"wrote {out} ({recipe.method} of {len(recipe.models)} model(s))")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evomm.tracking.report import report

    print(report(args.run_dirs, plots=not args.no_plots), end="")
    return 0


def cmd_export_mergekit(args: argparse.Namespace) -> int:
    from evomm.interop.mergekit_export import export_mergekit

    text = export_mergekit(args.recipe, out=args.out, local_paths=args.local_paths)
    if args.out is None:
        print(text, end="")
    else:
        print(f"wrote {args.out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from evomm.interop.hub import CARD, path_in_repo, push

    from evomm.interop.hub import single_file_copy

    files, url = push(args.run_dir, args.repo_id, private=args.private, dry_run=args.dry_run,
                      single_file=not args.no_single_file)
    single = single_file_copy(args.run_dir)
    if single is not None and single in files:
        print(f"note: {single.name} holds the same weights as the diffusers folders, in one file for A1111 / "
              f"ComfyUI ({single.stat().st_size / 1e6:.1f} MB more to upload); --no-single-file leaves it out")
    if args.dry_run:
        print(f"would upload {len(files)} file(s) to {args.repo_id}:")
        for f in files:
            note = "  (written from the run directory)" if f.name == CARD and not f.exists() else ""
            print(f"  {path_in_repo(args.run_dir, f)}  <- {f}{note}")
    else:
        print(f"uploaded {len(files)} file(s) to {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evomm", description="Evolve and rebuild model-merge recipes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("merge", help="rebuild best_recipe.yaml, or run a mergekit YAML, into OUT_DIR")
    p.add_argument("config", help="an evomm recipe (best_recipe.yaml) or a mergekit YAML")
    p.add_argument("out_dir", help="where to write the merged model")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's, else auto; a streamed "
                   "TIES/DARE/task-arithmetic merge runs on the CPU with numba unless a GPU is named)")
    p.add_argument("--max-shard-size", default=None,
                   help="largest weight file of a streamed merge, e.g. 5GB (default), 500MB")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("report", help="summarise run directories (no W&B needed) and redraw their plots")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run: a summary; several: a comparison table")
    p.add_argument("--no-plots", action="store_true", help="do not redraw fitness.png / recipe_heatmap.png / route.png")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export-mergekit", help="write a text-LLM recipe as a mergekit YAML config")
    p.add_argument("recipe", help="best_recipe.yaml, or the run directory that holds it")
    p.add_argument("-o", "--out", default=None, help="output file (default: print to stdout)")
    p.add_argument("--local-paths", action="store_true",
                   help="write built-in models as this machine's folders (runnable by mergekit here) "
                        "instead of builtin:<name>")
    p.set_defaults(func=cmd_export_mergekit)

    p = sub.add_parser("push", help="upload a run's merged model, card, recipe and results to the Hugging Face hub")
    p.add_argument("run_dir", help="the run directory (it holds merged/ and best_recipe.yaml)")
    p.add_argument("repo_id", help="OWNER/NAME on the hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list the files that would go up; upload nothing")
    p.add_argument("--no-single-file", action="store_true",
                   help="SDXL: upload the diffusers folders only, not their single-file copy merged.safetensors")
    p.set_defaults(func=cmd_push)
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
