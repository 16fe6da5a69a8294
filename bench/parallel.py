"""Candidates per second with 1 and 2 evaluating processes (torchrun, smoke-sized task).

Each run is ``python -m torch.distributed.run --nproc_per_node N bench/parallel.py --worker``:
every process loads the smoke_llm experiment's adapter and task (tiny Llamas, toy_arith with
``--samples`` items per candidate, so that a candidate costs more than passing it around);
rank 0 runs CMA-ES and spreads each population over the ranks
(``evomm.search.distributed``). One warm-up generation, then the timed ones. Each process
uses one torch thread, so N processes use N cores; a 1-process run with 2 threads is reported
for comparison.

    python bench/parallel.py [--generations N] [--popsize N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, compose, emit, parser

TARGET = 1.7


def worker(args) -> None:
    import torch
    from omegaconf import OmegaConf

    from evomm.quiet import quiet_libraries
    from evomm.search import distributed
    from evomm.search.checkpoint import SearchState
    from evomm.search.loop import Problem, search
    from evomm.search.optimizers import build_optimizer
    from evomm.search.build import build_search
    from evomm.tasks import build_task_from

    torch.set_num_threads(args.threads or 1)
    quiet_libraries()
    ranks = distributed.init_from_env()
    c = OmegaConf.to_container(
        compose(["experiment=smoke_llm", "logger=none", f"task.fitness_samples={args.samples}"]), resolve=True
    )
    task = build_task_from(c["task"])
    adapter, space = build_search(c)
    problem = Problem(space=space, adapter=adapter, task=task, split=task.fitness_split)
    if not ranks.is_main:
        distributed.serve(problem, ranks)
        return
    optimizer = build_optimizer("cmaes", dim=space.dim, seed=0, popsize=args.popsize)
    state = SearchState(optimizer=optimizer)
    evaluate = distributed.population_evaluator(problem, ranks)
    try:
        state = search(problem, optimizer, state, 1, evaluate_population=evaluate)  # warm-up
        start = time.perf_counter()
        state = search(problem, optimizer, state, 1 + args.generations, evaluate_population=evaluate)
        seconds = time.perf_counter() - start
    finally:
        ranks.release()
    n = args.generations * args.popsize
    print("RESULT " + json.dumps({"candidates": n, "seconds": seconds, "per_second": n / seconds}), flush=True)


def launch(processes: int, threads: int, args) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           __file__, "--worker", "--threads", str(threads), "--generations", str(args.generations),
           "--popsize", str(args.popsize), "--samples", str(args.samples)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--worker", action="store_true")
    # 16 x 8 candidates: about 3 s of timed work per run; with 4 generations (under a second
    # since fitness generation got faster) the figure moved between 1.5x and 1.7x from run to run
    p.add_argument("--generations", type=int, default=16)
    p.add_argument("--popsize", type=int, default=8)
    p.add_argument("--samples", type=int, default=64, help="toy_arith items scored per candidate")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    os.environ.setdefault("EVOMM_HOME", str(Path.home() / ".cache" / "evomm"))
    one = launch(1, 1, args)
    two = launch(2, 1, args)
    one_two_threads = launch(1, 2, args)
    emit(bench="parallel", speedup=round(two["per_second"] / one["per_second"], 2), target_speedup=TARGET,
         one_process_per_second=round(one["per_second"], 2), two_processes_per_second=round(two["per_second"], 2),
         one_process_two_threads_per_second=round(one_two_threads["per_second"], 2),
         candidates=two["candidates"], threads_per_process=1)


if __name__ == "__main__":
    main()
