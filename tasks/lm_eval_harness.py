"""lm_eval: any lm-evaluation-harness task as fitness, scored on the resident model in place.

The task is named as lm-evaluation-harness names it (``arc_easy``, ``gsm8k``, ...) or comes from
the user's own task YAMLs (``include_path``, a folder of them, or ``task`` as a YAML path).
Generation (``generate_until``) and log-likelihood (``multiple_choice``, ``loglikelihood``)
tasks alike are scored by lm-eval's own code, with the task's own metric (``metric``: a name, or
``name,filter`` as lm-eval reports it); fitness is that metric, made higher-is-better.

The model is not saved or reloaded per candidate: lm-eval's ``HFLM`` wraps the resident model
object itself (``HFLM(pretrained=model)`` keeps a reference, no copy), so every candidate the
search writes into that model is what lm-eval scores. It gets a copy of the tokenizer, because
HFLM sets a pad token on a tokenizer that has none.

Items. ``fitness`` and ``heldout`` never share a document:
- ``fitness_docs`` and ``heldout_docs`` both null (or the same lm-eval split): the task's
  evaluation split is divided once by a permutation seeded with ``split_seed`` — a
  ``heldout_fraction`` of it is held out, the rest is the fitness pool;
- two different lm-eval splits (e.g. ``fitness_docs: validation``, ``heldout_docs: test``): each
  is used whole, and ``validate`` refuses documents that appear in both.
``fitness_samples`` / ``heldout_samples`` then take a seeded sample of each pool (null: all),
which is the item list ``evaluate(..., items=...)`` indexes. Documents are always scored in
their dataset order (lm-eval's ``samples`` selection), and per-item scores come from lm-eval's
per-sample results.

Few-shot examples come from where the task's YAML takes them (its training or validation split);
a task that draws them from its evaluation split can show held-out documents in fitness prompts:
use ``num_fewshot: 0`` or two splits for such a task. The few-shot seed is reset before every
evaluation, so a candidate's score does not depend on how many were scored before it.

lm-eval is imported only when the task is evaluated or validated.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import random
import warnings
from typing import Any

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.tasks.base import Resampling

# Benchmarks that papers report: evolving on them makes their scores no fair held-out measure.
WELL_KNOWN = ("gsm8k", "mmlu", "arc_", "hellaswag", "truthfulqa", "winogrande", "piqa", "boolq",
              "lambada", "mgsm", "bbh", "gpqa", "ifeval", "math", "humaneval", "mbpp", "openbookqa",
              "siqa", "commonsense_qa", "triviaqa", "nq_open", "drop", "race", "ja_leaderboard")

SPLITS = ("fitness", "heldout")


def is_well_known(task_name: str) -> bool:
    return any(task_name == p.rstrip("_") or task_name.startswith(p) for p in WELL_KNOWN)


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"lm_eval: {name} must be a positive integer or null, got {value!r}")


class LMEvalTask(Resampling):
    name = "lm_eval"
    modality = "llm"
    fitness_split = "fitness"
    heldout_split = "heldout"

    def __init__(
        self,
        task: str | None = None,
        include_path: str | list[str] | None = None,
        include_defaults: bool = True,
        metric: str | None = None,
        fitness_docs: str | None = None,
        heldout_docs: str | None = None,
        heldout_fraction: float = 0.5,
        split_seed: int = 0,
        fitness_samples: int | None = 64,
        heldout_samples: int | None = None,
        seed: int = 0,
        num_fewshot: int | None = None,
        fewshot_seed: int = 1234,
        batch_size: int = 16,
        max_length: int | None = None,
        gen_kwargs: dict | None = None,
        quiet: bool = True,
    ):
        if not task or not isinstance(task, str):
            raise ConfigError("lm_eval: set task.task to an lm-evaluation-harness task name or a task YAML path")
        _positive_or_none("fitness_samples", fitness_samples)
        _positive_or_none("heldout_samples", heldout_samples)
        _positive_or_none("batch_size", batch_size)
        if not 0.0 < float(heldout_fraction) < 1.0:
            raise ConfigError(f"lm_eval: heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
        self.task_name = task
        self.include_path = include_path
        self.include_defaults = include_defaults
        self.metric = metric
        self.docs = {"fitness": fitness_docs, "heldout": heldout_docs}
        self.heldout_fraction = float(heldout_fraction)
        self.split_seed = split_seed
        self.samples = {"fitness": fitness_samples, "heldout": heldout_samples}
        self.seed = seed
        self.num_fewshot = num_fewshot
        self.fewshot_seed = fewshot_seed
        self.batch_size = batch_size
        self.max_length = max_length
        self.gen_kwargs = dict(gen_kwargs or {})
        self.quiet = quiet
        self._manager = None
        self._tasks: dict[str | None, Any] = {}  # lm-eval split override (None: the task's own) -> Task
        self._pools: dict[str, list[int]] | None = None
        self._items: dict[str, list[int]] = {}
        self._lm = None

    # -- lm-eval objects ------------------------------------------------------------------------

    def _task_manager(self):
        if self._manager is None:
            from lm_eval.tasks import TaskManager

            from evomm.builtin import is_builtin, resolve_dataset

            logging.getLogger("lm_eval").setLevel(logging.ERROR)
            # builtin:<name> folders of task YAMLs are built-in data sets, written once
            paths = self.include_path if isinstance(self.include_path, (list, tuple)) else [self.include_path]
            paths = [resolve_dataset(p) if is_builtin(p) else p for p in paths if p]
            self._manager = TaskManager(include_path=paths, include_defaults=self.include_defaults)
        return self._manager

    def lm_task(self, split: str):
        """The lm-eval Task object whose evaluation docs are ``split``'s pool."""
        docs = self._docs_split(split)
        if docs not in self._tasks:
            try:
                loaded = self._task_manager().load([self.task_name])
            except (KeyError, ValueError, FileNotFoundError) as e:
                raise ConfigError(f"lm_eval: cannot load task '{self.task_name}': {e}") from None
            if len(loaded["tasks"]) != 1:
                raise ConfigError(
                    f"lm_eval: '{self.task_name}' is a group of {len(loaded['tasks'])} tasks; name one of "
                    f"them (e.g. {sorted(loaded['tasks'])[0]}), or list several as objectives of task=multi"
                )
            task = next(iter(loaded["tasks"].values()))
            if docs is not None:  # evaluation docs from the named split of the task's dataset
                if docs not in task.dataset:
                    raise ConfigError(f"lm_eval: task '{self.task_name}' has no split '{docs}'; "
                                      f"its splits: {sorted(task.dataset)}")
                task.set_config(key="test_split", value=docs)
            if task.get_config("output_type") == "generate_until" and self.gen_kwargs:
                task.set_config(key="generation_kwargs", value=self.gen_kwargs, update=True)
            if self.num_fewshot is not None:
                task.set_config(key="num_fewshot", value=self.num_fewshot)
            elif task.get_config("num_fewshot") is None:  # as simple_evaluate does
                task.set_config(key="num_fewshot", value=0)
            self._tasks[docs] = task
        return self._tasks[docs]

    def _docs_split(self, split: str) -> str | None:
        if split not in SPLITS:
            raise ConfigError(f"lm_eval has splits 'fitness' and 'heldout', not '{split}'")
        return None if self._divided() else self.docs[split]

    def _divided(self) -> bool:
        """True when fitness and held-out items come from one split, divided by a permutation."""
        return self.docs["fitness"] == self.docs["heldout"]

    def metric_key(self) -> tuple[str, str]:
        """(metric, filter) of the fitness metric, as lm-eval keys its results ``metric,filter``."""
        task = self.lm_task("fitness")
        metrics = list(task.higher_is_better())
        filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
        name, _, filt = (self.metric or metrics[0]).partition(",")
        if name not in metrics:
            raise ConfigError(f"lm_eval: task '{self.task_name}' has no metric '{name}'; its metrics: {metrics}")
        filt = filt or filters[0]
        if filt not in filters:
            raise ConfigError(f"lm_eval: task '{self.task_name}' has no filter '{filt}'; its filters: {filters}")
        return name, filt

    def hflm(self, handle: LLMHandle):
        """lm-eval's HFLM around the handle's model object itself (built once per model)."""
        if self._lm is None or self._lm.model is not handle.model:
            from lm_eval.models.huggingface import HFLM

            with warnings.catch_warnings(), self._silenced():
                warnings.simplefilter("ignore")
                self._lm = HFLM(pretrained=handle.model, tokenizer=copy.deepcopy(handle.tokenizer),
                                batch_size=self.batch_size, max_length=self.max_length)
        return self._lm

    def _silenced(self):
        return contextlib.redirect_stderr(io.StringIO()) if self.quiet else contextlib.nullcontext()

    # -- items -----------------------------------------------------------------------------------

    def pools(self) -> dict[str, list[int]]:
        """Document indices (into each split's lm-eval docs) that fitness and held-out draw from."""
        if self._pools is None:
            if self._divided():
                n = len(self.lm_task("fitness").eval_docs)
                order = random.Random(self.split_seed).sample(range(n), n)
                n_held = max(1, round(self.heldout_fraction * n))
                if n_held >= n:
                    raise ConfigError(f"lm_eval: task '{self.task_name}' has {n} document(s), too few to hold out some")
                self._pools = {"heldout": order[:n_held], "fitness": order[n_held:]}
            else:
                self._pools = {s: list(range(len(self.lm_task(s).eval_docs))) for s in SPLITS}
        return self._pools

    def items(self, split: str) -> list[int]:
        """The split's scored documents, in dataset order: a seeded sample of its pool."""
        if split not in self._items:
            self._docs_split(split)  # refuses an unknown split name
            pool = self.pools()[split]
            n = self.samples[split]
            chosen = random.Random(self.sample_seed(split)).sample(pool, n) if n and n < len(pool) else pool
            self._items[split] = sorted(chosen)
        return self._items[split]

    def num_items(self, split: str) -> int:
        return len(self.items(split))

    def forget(self, split: str) -> None:
        self._items.pop(split, None)

    def validate(self) -> None:
        pools = self.pools()
        if not self._divided():
            held = {_doc_key(self.lm_task("heldout").eval_docs[i]) for i in pools["heldout"]}
            shared = [i for i in pools["fitness"] if _doc_key(self.lm_task("fitness").eval_docs[i]) in held]
            if shared:
                raise ConfigError(
                    f"lm_eval: {len(shared)} document(s) of split '{self.docs['fitness']}' are also in "
                    f"'{self.docs['heldout']}'; choose disjoint splits, or leave fitness_docs and heldout_docs "
                    "null to divide one split"
                )
        elif set(pools["fitness"]) & set(pools["heldout"]):  # cannot happen; the guard is the point
            raise ConfigError("lm_eval: fitness and held-out documents overlap")
        self.metric_key()
        if is_well_known(self.task_name):
            warnings.warn(
                f"lm_eval: evolving on '{self.task_name}', a well-known benchmark: after the search its "
                "scores (even on its held-out documents) are no longer a fair held-out measure of the model",
                UserWarning,
                stacklevel=2,
            )

    # -- scoring ---------------------------------------------------------------------------------

    def evaluate(self, handle: LLMHandle, split: str, items: list[int] | None = None) -> dict:
        """Score ``items`` (positions in ``self.items(split)``; None: all) with lm-eval."""
        from lm_eval.evaluator import evaluate as lm_evaluate

        chosen = self.items(split)
        if items is not None:
            chosen = [chosen[i] for i in items]
        if not chosen:
            raise ConfigError("lm_eval: no items to score")
        task = self.lm_task(split)
        task.set_fewshot_seed(seed=self.fewshot_seed)  # the same few-shot draws for every candidate
        name, filt = self.metric_key()
        docs = sorted(set(chosen))  # lm-eval labels selected docs correctly only in dataset order
        with self._silenced():
            results = lm_evaluate(lm=self.hflm(handle), task_dict={"tasks": {task.config.task: task}},
                                  samples={task.config.task: docs}, bootstrap_iters=0, log_samples=True)
        label = task.config.task
        per_doc = {s["doc_id"]: float(s[name]) for s in results["samples"][label] if s["filter"] == filt}
        sign = 1.0 if task.higher_is_better()[name] else -1.0
        value = float(results["results"][label][f"{name},{filt}"])
        out = {"fitness": sign * value, name: value, "n": float(len(docs))}
        out["item_scores"] = [sign * per_doc[d] for d in chosen]
        return out


def _doc_key(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)
