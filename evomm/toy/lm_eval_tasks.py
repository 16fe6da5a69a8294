"""``builtin:toy-lm-eval-tasks``: lm-evaluation-harness task YAMLs over the toy world, offline.

A data set folder written once into ``$EVOMM_HOME/data`` holding JSONL data and two
task YAMLs whose data paths point into it, for ``task=lm_eval include_path=builtin:toy-lm-eval-tasks``:

- ``toy_en_arith``: English arithmetic, generated and scored by exact match (``generate_until``);
- ``toy_ja_qa_choice``: Japanese Q/A as three choices scored by log-likelihood (``multiple_choice``).
"""

from __future__ import annotations

import json
from pathlib import Path

from evomm.builtin import DATASETS
from evomm.toy import world

GENERATE = """task: toy_en_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: [" "]
"""

CHOICE = """task: toy_ja_qa_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def build(out_dir: Path) -> None:
    sets = world.eval_sets()
    arith = [{"prompt": p, "answer": a} for p, a in sorted(sets["english_arith"])]
    answers = sorted({a for _, a in sets["japanese_qa"]})
    choice = []
    for n, (p, a) in enumerate(sorted(sets["japanese_qa"])):
        wrong = [x for x in answers if x != a]
        options = [a, wrong[n % len(wrong)], wrong[(n * 7 + 3) % len(wrong)]]
        order = sorted(range(3), key=lambda k: (n * 5 + k * 3) % 3)  # the right answer moves around
        choice.append({"prompt": p, "choices": [" " + options[k] for k in order], "label": order.index(0)})
    # the folder is written to a temporary sibling and renamed: data paths name the final place
    final = out_dir.parent / out_dir.name[1:].rsplit(".", 1)[0] if out_dir.name.startswith(".") else out_dir
    _write_jsonl(out_dir / "en_arith.jsonl", arith)
    _write_jsonl(out_dir / "ja_qa_choice.jsonl", choice)
    (out_dir / "toy_en_arith.yaml").write_text(GENERATE.format(data=final / "en_arith.jsonl"))
    (out_dir / "toy_ja_qa_choice.yaml").write_text(CHOICE.format(data=final / "ja_qa_choice.jsonl"))


DATASETS.add("toy-lm-eval-tasks", build)
