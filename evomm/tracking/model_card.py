"""Model cards: ``<run dir>/merged/README.md`` for the evolved model.

The card is what the Hugging Face hub shows: YAML front matter (licence when it is known, the
source models as ``base_model``, tags) and a body that says what was merged, how the search ran,
the recipe itself and the held-out results, and how to rebuild the model.

Source licences come from, in order: the source's own ``README.md`` front matter (a local folder,
or a copy in the local hub cache; never the network), a ``license`` key in its ``config.json``,
and a short table of the paper's models written here (``KNOWN_LICENSES``, as their hub cards
state them; check the card before relying on it). Otherwise the licence is "unknown".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from evomm import builtin
from evomm.recipe.recipe import Recipe
from evomm.search.space_defaults import DEFAULT_BOUNDS, evolved_params
from evomm.tracking.spending import spending_lines
from evomm.tracking.results import results_markdown

# Licences of the paper's source models as their hub model cards give them. A table, not a
# lookup: a card can change, and a local README.md or config always wins over this.
KNOWN_LICENSES: dict[str, str] = {
    "mistralai/Mistral-7B-v0.1": "apache-2.0",
    "augmxnt/shisa-gamma-7b-v1": "apache-2.0",
    "WizardLMTeam/WizardMath-7B-V1.1": "other (microsoft-research-license)",
    "WizardLM/WizardMath-7B-V1.1": "other (microsoft-research-license)",
    "llava-hf/llava-v1.6-mistral-7b-hf": "apache-2.0",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "ByteDance/SDXL-Lightning": "openrail++",
}

# What the hub should call the merged model, per adapter.
_PIPELINES = {
    "llm": ("transformers", "text-generation"),
    "vlm": ("transformers", "image-text-to-text"),
    "sdxl": ("diffusers", "text-to-image"),
}
_KINDS = {"llm": "A text LLM", "vlm": "A vision-language model", "sdxl": "An SDXL UNet"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(ref: str) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_HUB_ID.fullmatch(str(ref))) and not Path(ref).exists()


def front_matter(text: str) -> dict:
    """The YAML block between the leading ``---`` lines of a model card; {} when there is none."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _license_of_card(meta: dict) -> str | None:
    lic = meta.get("license")
    if not lic:
        return None
    name = meta.get("license_name")
    return f"{lic} ({name})" if lic == "other" and name else str(lic)


def _cached_hub_file(ref: str, filename: str) -> Path | None:
    """A file of a hub repo if it is in the local cache; the network is never asked."""
    import os

    # The cache folder is read from the environment now (huggingface_hub fixes it at import).
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    cache = os.path.expanduser(os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"))
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, filename, cache_dir=cache)
    except Exception:  # noqa: BLE001 - an odd id or an unreadable cache: simply not cached
        return None
    return Path(found) if isinstance(found, str) else None


def source_license(ref: str) -> tuple[str, str]:
    """(licence, where it came from) for one source model; ("unknown", "") when nothing says."""
    folder = Path(builtin.resolve(ref) if builtin.is_builtin(ref) else ref)
    readme = folder / "README.md" if folder.is_dir() else (_cached_hub_file(ref, "README.md") if is_hub_id(ref) else None)
    if readme is not None and readme.is_file():
        lic = _license_of_card(front_matter(readme.read_text(errors="replace")))
        if lic:
            return lic, "model card"
    config = folder / "config.json" if folder.is_dir() else (_cached_hub_file(ref, "config.json") if is_hub_id(ref) else None)
    if config is not None and config.is_file():
        try:
            lic = json.loads(config.read_text()).get("license")
        except (json.JSONDecodeError, AttributeError):
            lic = None
        if lic:
            return str(lic), "config"
    if ref in KNOWN_LICENSES:
        return KNOWN_LICENSES[ref], "known-licence table"
    return "unknown", ""


def task_splits(task_name: str | None) -> tuple[str | None, str | None]:
    """(fitness split, held-out split) a task class declares, without building the task."""
    if not task_name:
        return None, None
    try:
        from evomm import plugins

        cls = plugins.load_class("task", task_name)
        return getattr(cls, "fitness_split", None), getattr(cls, "heldout_split", None)
    except Exception:  # noqa: BLE001 - an unknown task still gets a card
        return None, None


def _history_facts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return {}
    per_gen: dict[Any, int] = {}
    for h in lines:
        per_gen[h.get("generation")] = per_gen.get(h.get("generation"), 0) + 1
    scored = [h["fitness"] for h in lines if h.get("fitness") is not None]
    return {
        "evaluations": len(lines),
        "generations": len(per_gen),
        "popsize": max(per_gen.values()),
        "failed": len(lines) - len(scored),
        "best": max(scored) if scored else None,
    }


def card_text(run_dir: Path, recipe: Recipe, rows: list[dict], config: dict) -> str:
    run_dir, config = Path(run_dir), config or {}
    recipe = Recipe.from_dict(recipe.to_dict())  # built-in models by their builtin: names, not cache paths
    refs = [("source " + str(i), m) for i, m in enumerate(recipe.models)]
    if recipe.base:
        refs.append(("base", recipe.base))
    if recipe.route:
        refs += [(f"route model {i + 1}", m) for i, m in enumerate(recipe.route.get("models") or [])]
    licenses = {ref: source_license(ref) for _, ref in refs}
    task = config.get("task") or {}
    task_ref = task.get("_target_") or task.get("name")
    fit_split, held_split = task_splits(task_ref)
    lines = _front_matter(recipe, refs, licenses)
    lines += _sources(recipe, refs, licenses, config.get("experiment_name") or run_dir.name)
    lines += _method(recipe, space_settings(config))
    lines += _config_differences(recipe)
    lines += _search(run_dir, config, task_ref, fit_split, held_split)
    lines += _recipe_results_rebuild(recipe, rows, held_split)
    return "\n".join(lines) + "\n"


def _front_matter(recipe: Recipe, refs: list, licenses: dict) -> list[str]:
    meta: dict[str, Any] = {}
    known = {lic for lic, _ in licenses.values()}
    if len(known) == 1 and "unknown" not in known and not next(iter(known)).startswith("other"):
        meta["license"] = next(iter(known))  # every source agrees; otherwise the table below says
    hub_refs = list(dict.fromkeys(ref for _, ref in refs if is_hub_id(ref)))
    if hub_refs:
        meta["base_model"] = hub_refs
        meta["base_model_relation"] = "merge"
    library, pipeline = _PIPELINES.get(recipe.adapter, (None, None))
    if library:
        meta["library_name"] = library
        meta["pipeline_tag"] = pipeline
    tags = ["merge", "evomm", "evolutionary-model-merge", recipe.method]
    if recipe.route is not None:
        tags.append("dfs")
    meta["tags"] = list(dict.fromkeys(tags))
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


def _sources(recipe: Recipe, refs: list, licenses: dict, title: str) -> list[str]:
    lines = [
        f"# {title}",
        "",
        f"{_KINDS.get(recipe.adapter, 'A model')} merged by evolution with evomm: an evolution strategy searched the "
        f"parameters of a `{recipe.method}` merge"
        + (" and a data-flow-space layer route" if recipe.route is not None else "")
        + " of the models below, scoring each candidate on a task.",
        "",
        "## Sources",
        "",
        "| role | model | licence |",
        "|---|---|---|",
    ]
    for role, ref in refs:
        lic, where = licenses[ref]
        lines.append(f"| {role} | `{ref}` | {lic}{f' ({where})' if where else ''} |")
    lines += ["", "The merged weights derive from every model above: each source's licence applies to them.", ""]
    return lines


def space_settings(config: dict) -> dict:
    """What the search evolved: the space section with evolve and bounds resolved (the merge
    section for a run written before the space group)."""
    space = config.get("space")
    if not isinstance(space, dict):
        return config.get("merge") or {}
    if not space.get("granularity"):
        return space  # a routed space: no parameter-space settings
    method = (config.get("merge") or {}).get("method")
    evolve = evolved_params(method, space.get("evolve")) if method else list(space.get("evolve") or [])
    given = space.get("bounds") or {}
    bounds = {p: given.get(p) or list(DEFAULT_BOUNDS.get(p, ())) for p in evolve}
    return {**space, "evolve": evolve, "bounds": bounds}


def _method(recipe: Recipe, space: dict) -> list[str]:
    lines = ["## Method", "", f"- merge method: `{recipe.method}`"]
    if recipe.method_params:
        lines.append("- method-wide parameters: " + ", ".join(f"`{k}={v}`" for k, v in recipe.method_params.items()))
    if space.get("granularity"):
        granularity = f"`{space['granularity']}`"
        if space["granularity"] != "model":
            granularity += f", {space.get('group_size', 1)} layer(s) per unit"
        if space["granularity"] == "layer_filter":
            granularity += f", filters {space.get('filters')}"
        lines.append(f"- granularity: {granularity}")
    if space.get("evolve"):
        lines.append(f"- evolved per unit: {', '.join(space['evolve'])} (bounds {space.get('bounds')})")
    lines.append(f"- parameter sets in the recipe: {len(recipe.entries)}")
    if recipe.route is not None:
        steps = recipe.route.get("steps") or []
        n_route = len(recipe.route.get("models") or [])
        lines.append(f"- route: {len(steps)} layer steps through model A and {n_route} route model(s)")
    if recipe.method in ("dare_ties", "dare_linear", "della"):
        lines.append(f"- random drop masks seeded by the recipe's seed ({recipe.seed})")
    return lines


def _config_differences(recipe: Recipe) -> list[str]:
    """Config fields that change what the weights mean and on which the sources disagree."""
    found = recipe.notes.get("config_differences") or {}
    if not found:
        return []
    lines = ["", "## Config differences between the sources", "",
             "The sources disagree on these config fields, which change what their weights mean; the merged "
             "model keeps the first source's values.", "", "| field | values |", "|---|---|"]
    for name, per_ref in found.items():
        lines.append(f"| `{name}` | " + "; ".join(f"`{ref}`: `{value}`" for ref, value in per_ref.items()) + " |")
    return lines


def _search(run_dir: Path, config: dict, task_ref: str | None, fit_split: str | None, held_split: str | None) -> list[str]:
    facts = _history_facts(run_dir)
    opt = config.get("optimizer") or {}
    task = config.get("task") or {}
    lines = ["", "## Search", ""]
    opt_ref = opt.get("_target_") or opt.get("name")
    if opt_ref:
        extra = ", ".join(f"{k} {opt[k]}" for k in ("sigma0", "x0") if opt.get(k) is not None)
        lines.append(f"- optimizer: `{opt_ref}`" + (f" ({extra})" if extra else ""))
    generations = facts.get("generations", opt.get("generations"))
    popsize = facts.get("popsize", opt.get("popsize"))
    if generations is not None:
        lines.append(f"- generations: {generations}, population size: {popsize if popsize is not None else 'default'}")
    if facts:
        lines.append(f"- evaluations: {facts['evaluations']} ({facts['failed']} failed)"
                     + (f", best search fitness {facts['best']:.4f}" if facts.get("best") is not None else ""))
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines() if x.strip()] \
        if (run_dir / "history.jsonl").is_file() else []
    lines += [f"- {line}" for line in spending_lines(run_dir, history)]
    if "seed" in config:
        lines.append(f"- seed: {config['seed']}")
    if task_ref:
        lines.append(f"- task: `{task_ref}`")
        if fit_split or held_split:
            lines.append(f"- fitness split: `{fit_split}`; results on the held-out split `{held_split}`")
        data = {k: v for k, v in task.items()
                if k not in ("name", "_target_") and ("dataset" in k or k.endswith("samples")) and v is not None}
        if data:
            lines.append("- data: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    if config.get("allow_heldout_fitness"):
        lines.append("- WARNING: the search was allowed to evolve on the held-out split (allow_heldout_fitness=true)")
    return lines


def _recipe_results_rebuild(recipe: Recipe, rows: list[dict], held_split: str | None) -> list[str]:
    lines = [
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "## Results" + (f" (held-out split `{held_split}`)" if held_split else ""),
        "",
        results_markdown(rows).rstrip() if rows else "No final evaluation was run.",
        "",
        "## Rebuild",
        "",
        "The recipe above is complete: with the source models at the same paths or hub ids,",
        "",
        "```",
        "evomm merge best_recipe.yaml OUT_DIR",
        "```",
        "",
        "rebuilds these weights.",
        "",
    ]
    if recipe.adapter == "llm" and recipe.route is None:
        lines.append("`evomm export-mergekit best_recipe.yaml -o mergekit.yaml` writes the same merge as a mergekit config.")
    return lines


def write_model_card(run_dir: str | Path, recipe: Recipe, rows: list[dict], config: dict) -> Path:
    """Write ``<run_dir>/merged/README.md`` and return its path."""
    run_dir = Path(run_dir)
    out = run_dir / "merged" / "README.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(card_text(run_dir, recipe, rows or [], config or {}))
    return out
