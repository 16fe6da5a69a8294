"""`evomm report` reads run directories alone (no W&B) and redraws their plots; the recipe heatmap."""

from __future__ import annotations

import json

import pytest

from evomm.runner import run
from evomm.cli import main as cli_main
from evomm.errors import ConfigError
from evomm.recipe.recipe import Entry, Recipe
from evomm.tracking.history import read_history
from evomm.tracking.plots import plot_recipe_heatmap, recipe_matrix
from evomm.tracking.report import comparison_row, comparison_table, load_run, report

from conftest import compose

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "smoke"
    run(compose(["experiment=smoke_llm", f"run_dir={run_dir}"]))
    return run_dir


def make_run(run_dir, fitnesses, results, recipe=None):
    """A run directory written by hand: history lines, a recipe, results.json."""
    run_dir.mkdir(parents=True)
    with open(run_dir / "history.jsonl", "w") as f:
        for k, (generation, fitness, error) in enumerate(fitnesses):
            f.write(json.dumps({
                "params": {}, "x": [0.5], "fitness": fitness, "metrics": {} if fitness is None else {"fitness": fitness},
                "error": error, "seconds": 0.1, "generation": generation, "index": k % 2,
            }) + "\n")
    recipe = recipe or Recipe(
        adapter="llm", method="ties", models=["org/a", "org/b"], base="org/base",
        entries=[Entry(params={"weight": [0.25, 0.75], "density": [0.5, 0.6]}, groups=["embed", "norm", "head"]),
                 Entry(params={"weight": [0.1, 0.9], "density": [0.3, 0.4]}, groups=["layers.0", "layers.1"])],
    )
    recipe.save(run_dir / "best_recipe.yaml")
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps([
            {"name": name, "kind": kind, "detail": "", "metrics": {"fitness": value}} for name, kind, value in results
        ]))
    return run_dir


@pytest.fixture
def hand_run(tmp_path):
    return make_run(
        tmp_path / "hand",
        [(0, 0.1, None), (0, None, "RuntimeError: boom\n  traceback line"), (1, 0.7, None), (1, 0.3, None)],
        [("evolved", "evolved", 0.6), ("a", "source", 0.4), ("b", "source", 0.2), ("ties", "baseline", 0.5)],
    )


def test_report_on_a_finished_smoke_run(smoke_run, capsys):
    for name in ("fitness.png", "recipe_heatmap.png"):
        (smoke_run / name).unlink(missing_ok=True)
    assert cli_main(["report", str(smoke_run)]) == 0
    text = capsys.readouterr().out
    history = read_history(smoke_run / "history.jsonl")
    best = max(h["fitness"] for h in history)
    best_gen = next(h["generation"] for h in history if h["fitness"] == best)
    assert f"best fitness: {best:.4f} (generation {best_gen}" in text
    assert f"evaluations: {len(history)} in {len({h['generation'] for h in history})} generation(s)" in text
    assert "failed candidates: 0" in text
    evolved = json.loads((smoke_run / "results.json").read_text())[0]
    assert f"| evolved | evolved | {evolved['metrics']['fitness']:.4f} |" in text
    recipe = Recipe.load(smoke_run / "best_recipe.yaml")
    assert f"| all | {recipe.entries[0].params['weight'][0]:.4f} |" in text  # granularity model: one unit
    assert is_png(smoke_run / "fitness.png") and is_png(smoke_run / "recipe_heatmap.png")
    assert not (smoke_run / "route.png").exists()


def test_summary_names_failures_best_generation_and_results(hand_run):
    text = report([hand_run], plots=False)
    assert "failed candidates: 1" in text
    assert "generation 0 candidate 1: RuntimeError: boom" in text and "traceback line" not in text
    assert "best fitness: 0.7000 (generation 1, candidate 0)" in text
    assert "| layers.0-1 | 0.1000 | 0.9000 | 0.3000 | 0.4000 |" in text
    assert "| ties | baseline | 0.5000 |" in text
    assert not (hand_run / "fitness.png").exists()  # plots=False writes nothing


def test_the_kept_candidate_of_best_json_wins_over_the_history(hand_run):
    """With resample_fitness the kept candidate's latest score is not in the history."""
    (hand_run / "best.json").write_text(json.dumps({"generation": 1, "index": 0, "fitness": 0.65, "sample": 2}))
    text = report([hand_run], plots=False)
    assert "best fitness: 0.6500 (generation 1, candidate 0; scored on fitness sample 2)" in text
    assert comparison_row(load_run(hand_run))["best fitness"] == 0.65
    (hand_run / "best.json").write_text('{"fitness": "high"}')
    with pytest.raises(ConfigError, match="best.json is not an evomm best-candidate file"):
        report([hand_run], plots=False)


def test_comparison_table_for_two_runs(smoke_run, hand_run, capsys):
    assert cli_main(["report", str(smoke_run), str(hand_run)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "experiment / method", "evaluations", "best fitness", "evolved (held-out)",
                      "best source", "best baseline", "delta"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert set(rows) == {"smoke", "hand"}
    # hand: evolved 0.6 against the best other model (baseline ties 0.5)
    assert rows["hand"][1:] == ["ties", "4", "0.7000", "0.6000", "a 0.4000", "ties 0.5000", "+0.1000"]
    smoke_results = json.loads((smoke_run / "results.json").read_text())
    evolved = smoke_results[0]["metrics"]["fitness"]
    best_other = max(r["metrics"]["fitness"] for r in smoke_results[1:])
    assert rows["smoke"][7] == f"{evolved - best_other:+.4f}"
    assert rows["smoke"][2] == str(len(read_history(smoke_run / "history.jsonl")))


def test_run_without_final_evaluation_still_reports(tmp_path):
    run = make_run(tmp_path / "noeval", [(0, 0.2, None)], results=None)
    assert "the final evaluation did not run" in report([run], plots=False)
    row = comparison_row(load_run(run))
    assert row["best fitness"] == 0.2 and row["evolved (held-out)"] is None and row["delta"] is None


def test_runs_with_the_same_folder_name_are_told_apart(tmp_path):
    a = make_run(tmp_path / "seed0" / "run", [(0, 0.2, None)], results=None)
    b = make_run(tmp_path / "seed1" / "run", [(0, 0.3, None)], results=None)
    table = comparison_table([load_run(a), load_run(b)])
    assert "| seed0/run |" in table and "| seed1/run |" in table


def test_missing_or_damaged_files_are_one_line_errors(hand_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="history.jsonl is missing"):
        report([tmp_path])
    broken = make_run(tmp_path / "broken", [(0, 0.1, None)], results=None)
    with open(broken / "history.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ConfigError, match="history.jsonl line 2 is not JSON"):
        report([broken])
    (hand_run / "results.json").write_text("[1, 2")
    assert cli_main(["report", str(hand_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evomm: error:") and "\n" not in err and "results.json is not valid JSON" in err
    (hand_run / "best_recipe.yaml").unlink()
    with pytest.raises(ConfigError, match="best_recipe.yaml is missing.*resume=true"):
        report([hand_run])


def test_report_draws_the_route_of_a_routed_recipe(tmp_path):
    recipe = Recipe(
        adapter="llm", method="linear", models=["org/a"], entries=[Entry(params={"weight": [1.0]})],
        route={"models": ["org/b"], "steps": [[0, 0], [1, 1], [0, 1]], "scales": [1.0, 0.8, 1.2]},
    )
    run = make_run(tmp_path / "dfs", [(0, 0.5, None)], results=None, recipe=recipe)
    text = report([run])
    assert is_png(run / "route.png") and is_png(run / "fitness.png")
    assert not (run / "recipe_heatmap.png").exists()  # model A taken as it is: nothing evolved to draw
    assert "route: 3 steps" in text and "dfs" in text


# ---- heatmap -------------------------------------------------------------------------------
def test_heatmap_of_one_entry(tmp_path):
    recipe = Recipe(adapter="llm", method="ties", models=["a", "b"], base="c",
                    entries=[Entry(params={"weight": [0.3, 0.7], "density": [0.5, 0.9]})])
    rows, cols, cells = recipe_matrix(recipe)
    assert rows == ["all"] and cols == ["weight/src0", "weight/src1", "density/src0", "density/src1"]
    assert cells == [[0.3, 0.7, 0.5, 0.9]]
    assert plot_recipe_heatmap(recipe, tmp_path / "h.png") == tmp_path / "h.png"
    assert is_png(tmp_path / "h.png")


def test_heatmap_of_a_layer_filter_recipe(tmp_path):
    entries = [Entry(params={"weight": [0.1, 0.2], "density": [0.3, 0.4]}, groups=["embed", "norm", "head"])]
    for i in range(4):
        for flt in ("self_attn", "mlp", None):
            params = {"weight": [i / 4, 1 - i / 4], "density": [0.5, 0.5]}
            entries.append(Entry(params=params, groups=[f"layers.{i}"], filter=flt))
    recipe = Recipe(adapter="llm", method="ties", models=["a", "b"], base="c", entries=entries)
    rows, cols, cells = recipe_matrix(recipe)
    assert len(rows) == 13 and rows[1:4] == ["layers.0/self_attn", "layers.0/mlp", "layers.0 (rest)"]
    assert cells[4][:2] == [0.25, 0.75]
    assert is_png(plot_recipe_heatmap(recipe, tmp_path / "lf.png"))


def test_heatmap_marks_method_wide_and_list_values(tmp_path):
    recipe = Recipe(adapter="llm", method="slerp", models=["a"], base="b",
                    entries=[Entry(params={"t": 0.4}, groups=["layers.0"]), Entry(params={"t": [0.1, 0.9]})])
    rows, cols, cells = recipe_matrix(recipe)
    assert cols == ["t"] and cells == [[0.4], [[0.1, 0.9]]]
    assert is_png(plot_recipe_heatmap(recipe, tmp_path / "t.png"))


def test_no_heatmap_for_a_pure_route(tmp_path):
    recipe = Recipe(adapter="llm", method="linear", models=["a", "b"],
                    route={"models": ["c"], "steps": [[0, 0]], "scales": [1.0]})
    assert plot_recipe_heatmap(recipe, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
