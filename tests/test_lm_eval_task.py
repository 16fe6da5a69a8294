"""task=lm_eval: lm-evaluation-harness tasks scored on the resident toy model, offline.

The tests write tiny task YAMLs and JSONL data files (English arithmetic of the toy world) and
compare evomm's scores with lm-eval's own ``simple_evaluate`` on the same model and documents.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.toy import world

GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/test.jsonl
    validation: {data}/validation.jsonl
test_split: test
validation_split: validation
output_type: generate_until
doc_to_text: "q: {{{{question}}}} a:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: [" "]
"""

MC_YAML = """task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/test.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "q: {{{{question}}}} a:"
doc_to_choice: "{{{{[answer, (answer|int + 1)|string, (answer|int + 2)|string]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _records(pairs):
    return [{"question": p[len("q: "):-len(" a:")], "answer": a} for p, a in pairs]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    data = root / "data"
    data.mkdir()
    pairs = sorted(world.eval_sets()["english_arith"])
    for name, chunk in (("test", pairs[:24]), ("validation", pairs[100:112])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(chunk)))
    (root / "toy_gen.yaml").write_text(GEN_YAML.format(name="toy_gen", data=data))
    (root / "arc_toy.yaml").write_text(GEN_YAML.format(name="arc_toy", data=data))
    (root / "toy_mc.yaml").write_text(MC_YAML.format(data=data))
    return root


@pytest.fixture(scope="module")
def handle():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomm.builtin import resolve

    path = resolve("builtin:toy-llm-math")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return LLMHandle(model=model, tokenizer=AutoTokenizer.from_pretrained(path))


def _task(task_dir, **options):
    from evomm.tasks import build_task

    options.setdefault("include_path", str(task_dir))
    options.setdefault("include_defaults", False)
    return build_task("lm_eval", **options)


def _reference(handle, task_dir, name, docs):
    """lm-eval's own simple_evaluate on a fresh HFLM of the same model and documents."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=16)
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    return simple_evaluate(model=lm, tasks=[name], task_manager=tm, samples={name: sorted(docs)}, bootstrap_iters=0)


@pytest.mark.parametrize("name,metric", [("toy_gen", "exact_match"), ("toy_mc", "acc")])
def test_scores_equal_simple_evaluate(handle, task_dir, name, metric):
    task = _task(task_dir, task=name, fitness_samples=6)
    task.validate()
    got = task.evaluate(handle, "fitness")
    docs = task.items("fitness")
    ref = _reference(handle, task_dir, name, docs)
    assert got["fitness"] == pytest.approx(float(ref["results"][name][f"{metric},none"]))
    by_doc = {s["doc_id"]: float(s[metric]) for s in ref["samples"][name]}
    assert got["item_scores"] == [by_doc[d] for d in docs]
    assert got["fitness"] == pytest.approx(sum(got["item_scores"]) / len(docs))


def test_whole_split_equals_limit(handle, task_dir):
    """Separate lm-eval splits are used whole; the first L items are lm-eval's limit=L."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = _task(task_dir, task="toy_gen", fitness_docs="test", heldout_docs="validation", fitness_samples=None)
    assert task.num_items("fitness") == 24 and task.num_items("heldout") == 12
    got = task.evaluate(handle, "fitness", items=list(range(5)))
    lm = HFLM(pretrained=handle.model, tokenizer=handle.tokenizer, batch_size=16)
    ref = simple_evaluate(model=lm, tasks=["toy_gen"], bootstrap_iters=0, limit=5,
                          task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    assert got["fitness"] == pytest.approx(float(ref["results"]["toy_gen"]["exact_match,none"]))
    assert got["item_scores"] == [float(s["exact_match"]) for s in ref["samples"]["toy_gen"]]


def test_wraps_the_resident_model_without_copy(handle, task_dir):
    task = _task(task_dir, task="toy_mc", fitness_samples=8)
    lm = task.hflm(handle)
    assert lm.model is handle.model
    assert lm.model.lm_head.weight.data_ptr() == handle.model.lm_head.weight.data_ptr()
    assert lm.tokenizer is not handle.tokenizer  # HFLM may set a pad token: never on ours
    before = task.evaluate(handle, "fitness")
    saved = handle.model.lm_head.weight.detach().clone()
    try:  # a candidate written into the resident model in place is what lm-eval scores
        with torch.no_grad():
            handle.model.lm_head.weight.mul_(-1.0)
        after = task.evaluate(handle, "fitness")
    finally:
        with torch.no_grad():
            handle.model.lm_head.weight.copy_(saved)
    assert task.hflm(handle) is lm
    assert after["fitness"] < before["fitness"]
    assert task.evaluate(handle, "fitness") == before


def test_items_select_positions_in_the_item_list(handle, task_dir):
    task = _task(task_dir, task="toy_mc", fitness_samples=8)
    full = task.evaluate(handle, "fitness")
    part = task.evaluate(handle, "fitness", items=[5, 0, 3])
    assert part["item_scores"] == [full["item_scores"][i] for i in (5, 0, 3)]
    assert part["n"] == 3.0


def test_fitness_and_heldout_are_disjoint_and_seeded(task_dir):
    a = _task(task_dir, task="toy_gen", seed=0, fitness_samples=4)
    b = _task(task_dir, task="toy_gen", seed=1, fitness_samples=4)
    pools = a.pools()
    assert not set(pools["fitness"]) & set(pools["heldout"])
    assert sorted(pools["fitness"] + pools["heldout"]) == list(range(24))
    assert len(pools["heldout"]) == 12
    assert b.pools() == pools  # the division depends on split_seed, not on the run's seed
    assert set(a.items("fitness")) <= set(pools["fitness"])
    assert a.items("fitness") != b.items("fitness")
    assert a.items("heldout") == sorted(pools["heldout"])
    a.resample(3)
    assert a.items("fitness") != _task(task_dir, task="toy_gen", seed=0, fitness_samples=4).items("fitness")


def test_overlapping_splits_are_refused(task_dir, tmp_path):
    (tmp_path / "dup.yaml").write_text(
        GEN_YAML.format(name="toy_dup", data=task_dir / "data").replace("validation.jsonl", "test.jsonl"))
    task = _task(tmp_path, task="toy_dup", fitness_docs="validation", heldout_docs="test")
    with pytest.raises(ConfigError, match="also in 'test'"):
        task.validate()


def test_config_errors(task_dir):
    with pytest.raises(ConfigError, match="task name"):
        _task(task_dir)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        _task(task_dir, task="toy_gen", heldout_fraction=1.0)
    with pytest.raises(ConfigError, match="no metric 'bleu'"):
        _task(task_dir, task="toy_gen", metric="bleu").validate()
    with pytest.raises(ConfigError, match="cannot load task"):
        _task(task_dir, task="no_such_task").validate()


def test_well_known_benchmark_warns(task_dir):
    from evomm.tasks.lm_eval_harness import is_well_known

    assert is_well_known("gsm8k") and is_well_known("arc_easy") and is_well_known("mmlu_anatomy")
    assert not is_well_known("toy_gen")
    with pytest.warns(UserWarning, match="no longer a fair held-out measure"):
        _task(task_dir, task="arc_toy").validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _task(task_dir, task="toy_gen").validate()


def test_lm_eval_is_imported_lazily():
    code = "import sys, evomm.tasks.lm_eval_harness; print('lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
