"""bench/gpu_check.py's CPU mode runs every step of the GPU check (so the script cannot rot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_small_runs_every_check():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--cpu-small"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_check = {line["check"]: line for line in lines}
    assert set(by_check) == {"model", "materialize", "generation", "generation_static_cache", "pytest"}
    assert by_check["generation_static_cache"]["rows_equal"] == by_check["generation_static_cache"]["rows"]
    assert by_check["materialize"]["seconds"] > 0 and by_check["materialize"]["floor_seconds"] > 0
    generation = by_check["generation"]
    assert generation["outputs_equal"] and generation["rows_equal"] == generation["rows"]
    assert generation["layers"] == 4 and generation["fast_forwards"] > 0
    pytest_line = by_check["pytest"]
    assert pytest_line["returncode"] == 0 and "collected" in pytest_line["summary"]
