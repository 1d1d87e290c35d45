"""The one-call GPU check (.ci/gpu-session) runs end to end here, on a tiny selection, so the script a GPU session
depends on cannot rot unnoticed between the (rare) sessions that are lent a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / ".ci" / "gpu-session"


def _run(tmp_path, *args):
    # SEQOPS_TEST_WORKERS=0: no pytest-xdist workers for the nested run (inside the GPU session's own run)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "SEQOPS_TEST_WORKERS": "0"}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_requires_a_commit(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 2 and "--commit" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this script is what runs the suite: a nested "
                    "run would spend minutes of the session's capped test stage on compute-sanitizer and benchmarks")
def test_runs_tests_and_benchmarks_and_leaves_the_files(tmp_path):
    results = tmp_path / "results"
    done = _run(tmp_path, "--commit", "0123abcd", "--budget", "240", "--stages", "tests sanitize bench",
                "--pytest", "tests/test_cells.py -k test_unbatched_input",
                "--bench", f"--quick --suites cell --ops lstm_cell --modes fwd --out {results}")
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("commit: 0123abcd")
    assert "tests: rc=0" in summary and "bench-rnn: rc=0" in summary
    tests_txt = (out / "gpu-tests.txt").read_text().splitlines()
    assert tests_txt[0] == "commit: 0123abcd"
    assert any(" passed" in line for line in tests_txt[-3:])
    assert (out / "junit.xml").exists()
    # the benchmarks record the commit they were given (the device's copy of the tree has no .git)
    rows = (results / "results.csv").read_text()
    assert "0123abcd" in rows


def test_a_spent_budget_skips_stages_instead_of_running_them(tmp_path):
    done = _run(tmp_path, "--commit", "c0ffee", "--budget", "0", "--stages", "tests bench")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "tests: skipped, no time left" in summary
    assert "bench-headline: skipped, no time left" in summary


def test_unknown_stages_are_refused(tmp_path):
    done = _run(tmp_path, "--commit", "c0ffee", "--stages", "tests benchmark")
    assert done.returncode == 2 and "unknown stage benchmark" in done.stderr
