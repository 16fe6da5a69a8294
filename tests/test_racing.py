"""Racing and item selection, the pure statistics (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from evomm.search.racing import RacingRule, item_order, race, schedule, told_values
from evomm.search.selection import select_items, spread_summary


def population(ps, n_items=64, seed=0):
    """0/1 item scores: candidate c gets item k right with probability ps[c] (items share difficulty)."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n_items)
    return np.array([(difficulty < p).astype(float) for p in ps])  # nested: paired differences are clean


def scorer(matrix, calls=None, failing=()):
    def score(candidates, items):
        if calls is not None:
            calls.append((list(candidates), list(items)))
        return [None if c in failing else [float(matrix[c, i]) for i in items] for c in candidates]
    return score


def test_schedule_doubles_up_to_the_pool_or_max_items():
    assert schedule(64, RacingRule(min_items=8)) == [8, 16, 32, 64]
    assert schedule(64, RacingRule(min_items=8, max_items=20)) == [8, 16, 20]
    assert schedule(5, RacingRule(min_items=8)) == [5]


def test_item_order_is_a_seeded_permutation_per_generation():
    pool = list(range(10, 30))
    a = item_order(pool, seed=0, generation=3)
    assert sorted(a) == pool and a == item_order(pool, seed=0, generation=3)
    assert a != item_order(pool, seed=0, generation=4) and a != item_order(pool, seed=1, generation=3)


def test_race_keeps_the_best_and_stops_the_clearly_worse():
    ps = [0.9, 0.85, 0.2, 0.1, 0.8, 0.15, 0.05, 0.75]
    matrix = population(ps)
    calls = []
    order = item_order(range(64), 0, 0)
    result = race(len(ps), order, scorer(matrix, calls), keep=4, rule=RacingRule(min_items=8))
    top = sorted(range(len(ps)), key=lambda c: -ps[c])[:4]
    for c in top:  # the best keep are scored on every item, in the race's order
        assert result.stopped_at[c] is None and result.items[c] == order
    assert sum(result.stopped) >= 2  # the hopeless ones stop early
    for c in range(len(ps)):
        assert result.items[c] == order[: len(result.items[c])]  # a prefix of the order
        assert result.estimate(c) == pytest.approx(matrix[c, result.items[c]].mean())
    assert sum(len(b) * len(c) for c, b in calls) == sum(len(i) for i in result.items)
    again = race(len(ps), order, scorer(matrix), keep=4, rule=RacingRule(min_items=8))
    assert again == result  # deterministic


def test_equal_candidates_are_never_stopped():
    matrix = population([0.5] * 6)
    result = race(6, list(range(64)), scorer(matrix), keep=3, rule=RacingRule(min_items=8))
    assert not any(result.stopped)


def test_bernstein_is_sound_but_stops_nothing_on_tens_of_binary_items():
    matrix = population([0.95, 0.9, 0.1, 0.05], n_items=64)
    result = race(4, list(range(64)), scorer(matrix), keep=2, rule=RacingRule(min_items=8, bound="bernstein"))
    assert not any(result.stopped)
    big = population([0.95, 0.9, 0.1, 0.05], n_items=4096)
    result = race(4, list(range(4096)), scorer(big), keep=2, rule=RacingRule(min_items=256, bound="bernstein"))
    assert result.stopped[2] and result.stopped[3] and not result.stopped[0]


def test_a_failed_candidate_leaves_the_race():
    matrix = population([0.9, 0.5, 0.1])
    result = race(3, list(range(64)), scorer(matrix, failing={1}), keep=1, rule=RacingRule(min_items=8))
    assert result.scores[1] is None and result.estimate(1) is None


def test_told_values_below_ranks_stopped_under_survivors_in_race_order():
    items, stopped = [64, 16, 8, 16], [False, True, True, True]
    fitness = [0.5, 0.9, 0.95, 0.6]
    assert told_values(fitness, items, stopped, "estimate") == fitness
    values = told_values(fitness, items, stopped, "below")
    assert values[0] == 0.5 and max(values[1:]) < 0.5
    assert values[1] > values[3] > values[2]  # later-stopped above earlier-stopped, then by estimate
    with pytest.raises(ValueError):
        told_values(fitness, items, stopped, "whatever")


def test_discriminating_selection_keeps_items_that_separate_models():
    # items 0-3 separate the models, 4-9 do not
    scores = np.array([[1, 0, 1, 1, 1, 1, 1, 0, 0, 0],
                       [0, 1, 0, 1, 1, 1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 1, 1, 1, 0, 0, 0]], dtype=float)
    sel = select_items(scores, 4, seed=0)
    assert sel.items == [0, 1, 2, 3] and sel.pool == 10 and "4 items separate" in sel.reason
    wider = select_items(scores, 6, seed=0)
    assert set(wider.items) >= {0, 1, 2, 3} and len(wider.items) == 6 and "seeded draw" in wider.reason
    assert select_items(scores, 6, seed=0) == wider
    rand = select_items(scores, 4, rule="random", seed=0)
    assert len(set(rand.items)) == 4 and rand == select_items(scores, 4, rule="random", seed=0)
    for s in (sel, wider):  # the line maps each model's subset mean near its pool mean
        subset, full = scores[:, s.items].mean(1), scores.mean(1)
        assert np.allclose([s.full_estimate(v) for v in subset], full, atol=0.15)
    assert spread_summary(scores, [0])["0"]["scores"] == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        select_items(scores, 3, rule="irt")


def test_fitness_settings_refuse_bad_values_before_anything_loads():
    from evomm.errors import ConfigError
    from evomm.search.scoring import FitnessSettings

    assert FitnessSettings.from_config(None).fingerprint() is None  # off: older checkpoints resume
    assert FitnessSettings.from_config({"racing": True}).fingerprint()["racing"] is True
    for bad, message in (({"racing": "yes"}, "fitness.racing"), ({"select": 1}, "fitness.select"),
                         ({"min_items": 16, "max_items": 8}, "max_items"), ({"delta": 1.5}, "fitness.delta"),
                         ({"bound": "hoeffding"}, "fitness.bound"), ({"stopped": "drop"}, "fitness.stopped"),
                         ({"select_rule": "irt"}, "fitness.select_rule"), ({"speed": 2}, "does not take")):
        with pytest.raises(ConfigError, match=message):
            FitnessSettings.from_config(bad)
    with pytest.raises(ConfigError, match="resample_fitness"):
        FitnessSettings.from_config({"select": 10}, resample=True)


def test_joined_rounds_and_pool_weights():
    from evomm.search.scoring import ItemPool, join_rounds

    part = lambda ids, scores, acc: {"params": {}, "x": [0.1], "seconds": 1.0, "fitness": sum(scores) / len(scores),  # noqa: E731
                                     "metrics": {"accuracy": acc, "n": float(len(ids))}, "error": None,
                                     "item_ids": ids, "item_scores": scores}
    entry = join_rounds([part([3, 1], [1.0, 0.0], 0.5), part([0, 2], [1.0, 1.0], 1.0)], stopped=False)
    assert entry["item_ids"] == [3, 1, 0, 2] and entry["items"] == 4 and entry["fitness"] == 0.75
    assert entry["metrics"]["accuracy"] == 0.75 and entry["metrics"]["n"] == 4.0 and entry["seconds"] == 2.0
    failed = join_rounds([part([3], [1.0], 1.0), {**part([1], [0.0], 0.0), "fitness": None, "error": "boom"}], True)
    assert failed["fitness"] is None and failed["error"] == "boom"
    pool = ItemPool(items=[0, 2], scale={0: 2.0, 2: 0.5}, offset=0.25)
    weighted = pool.transform(part([0, 2], [1.0, 1.0], 1.0))
    assert weighted["item_scores"] == [2.25, 0.75] and weighted["fitness"] == 1.5
    assert weighted["metrics"]["subset_fitness"] == 1.0


def test_racing_with_a_multi_objective_optimizer_is_refused_by_the_config_check():
    from conftest import compose
    from omegaconf import OmegaConf

    from evomm.config_checks import validate_config
    from evomm.errors import ConfigError

    c = OmegaConf.to_container(compose(["experiment=smoke_llm", "optimizer=nsga2", "fitness.racing=true"]), resolve=True)
    with pytest.raises(ConfigError, match="multi-objective"):
        validate_config(c)
