"""What scoring through lm-evaluation-harness costs per candidate, against evomm's own scorer.

The same toy model, 32 English-arithmetic items each way, greedy, up to 8 new tokens:
``toy_skill`` (evomm's batched generation + exact match) and ``lm_eval`` on the built-in toy task
``toy_en_arith`` (lm-eval builds the requests, generates through HFLM around the same model
object, filters and scores). Also the 21-item log-likelihood task ``toy_ja_qa_choice``.
Prints one JSON line per task: median seconds per evaluation and the ratio to toy_skill.
"""

from __future__ import annotations

import _common as c


def main() -> None:
    args = c.parser(__doc__).parse_args()
    c.setup(args)
    c.quiet()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomm.adapters.base import LLMHandle
    from evomm.builtin import resolve
    from evomm.tasks import build_task

    path = resolve("builtin:toy-llm-math")
    handle = LLMHandle(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    lm_options = dict(include_path="builtin:toy-lm-eval-tasks", include_defaults=False, heldout_fraction=0.5)
    tasks = {
        "toy_skill": build_task("toy_skill", skill="english_arith", fitness_samples=32),
        "lm_eval toy_en_arith": build_task("lm_eval", task="toy_en_arith", fitness_samples=32, batch_size=64, **lm_options),
        "lm_eval toy_ja_qa_choice": build_task("lm_eval", task="toy_ja_qa_choice", fitness_samples=32, batch_size=64,
                                               **lm_options),
    }
    reference = None
    for name, task in tasks.items():
        result = task.evaluate(handle, "fitness")  # warm: lm-eval builds its task and HFLM once
        seconds = c.median(c.timed(lambda: task.evaluate(handle, "fitness"), args.repeats))
        reference = reference or seconds
        c.emit(bench="lm_eval_overhead", task=name, items=int(result["n"]), seconds_per_evaluation=round(seconds, 4),
               ratio_to_toy_skill=round(seconds / reference, 2), fitness=round(result["fitness"], 4))


if __name__ == "__main__":
    main()
