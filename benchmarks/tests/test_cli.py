"""End to end: `python -m benchmarks --quick` on the CPU into a temporary folder."""

import json
import subprocess
import sys

import pytest

from benchmarks import __main__ as cli
from benchmarks import env as env_mod
from benchmarks import report
from benchmarks.cases import HEADLINE
from benchmarks.env import REPO_ROOT, slugify
from benchmarks.providers import providers_for


def test_quick_run_writes_every_output(tmp_path, capsys):
    argv = ["--device", "cpu", "--quick", "--budget", "0.005", "--out", str(tmp_path), "--filter", "fwd."]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    selected = cli.pick_cases(cli.parse_args(argv), "cpu")
    expected = {(c.name, p.name) for c in selected for p in providers_for(c.suite, "cpu", quick=True)}
    # a row for every (case, provider), failures included
    assert {(r["name"], r["provider"]) for r in data["rows"]} == expected
    assert any(r["status"] == "ok" for r in data["rows"])  # torch's own providers always run
    for r in data["rows"]:
        assert r["status"] in ("ok", "unavailable", "unsupported", "failed")
        assert r["status"] != "ok" or r["median_ms"] > 0
        assert r["date"] and r["commit"] and r["torch"] and r["device_slug"].startswith("cpu-")
        assert r["name"] in out
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == ",".join(report.ROW_FIELDS)
    head = json.loads((tmp_path / "headline.json").read_text())
    assert [r["name"] for r in head["rows"]] == list(HEADLINE)
    assert "Cells" in out and "rows in" in out

    (tmp_path / "headline.json").unlink()
    assert cli.main(["--replot", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "headline.json").read_text())["commit"] == data["rows"][0]["commit"]


def test_time_limit_stops_after_the_first_case(tmp_path):
    argv = ["--device", "cpu", "--quick", "--budget", "0.001", "--out", str(tmp_path), "--no-plots",
            "--time-limit", "0", "--suites", "cell", "--providers", "torch.nn"]
    assert cli.main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    got = [(r["name"], r["provider"], r["status"]) for r in rows]
    assert got == [("lstm_cell.fwd.B8.H32.fp32", "torch.nn", "ok")]


def test_module_entry_point_lists_cases():
    cmd = [sys.executable, "-m", "benchmarks", "--list", "--device", "cpu", "--suites", "cell"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("lstm_cell.fwd.B64.H512.fp32")


def test_size_and_dtype_options():
    args = cli.parse_args(["--suites", "rnn", "--ops", "gru", "--seq-len", "5", "--hidden", "7",
                           "--batch", "2", "--dtypes", "bf16", "--modes", "fwd"])
    cases = cli.pick_cases(args, "cpu")
    assert {c.name for c in cases} == {"gru.fwd.B2.T5.H7.bf16"}


def test_slug():
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slugify("AMD EPYC 7R13 Processor") == "amd-epyc-7r13-processor"


@pytest.mark.parametrize("model,family,slug", [
    ("AMD EPYC", "family 23 model 49", "cpu-amd-epyc-family-23-model-49"),  # a VM's name: Zen 2 and Zen 5 alike
    ("AMD EPYC 7R13 Processor", "family 25 model 1", "cpu-amd-epyc-7r13-processor"),
    ("AMD EPYC", None, "cpu-amd-epyc"),
])
def test_cpu_slug_tells_generic_model_names_apart(monkeypatch, model, family, slug):
    monkeypatch.setattr(env_mod, "cpu_model", lambda: model)
    monkeypatch.setattr(env_mod, "cpu_family", lambda: family)
    assert env_mod.device_slug("cpu") == slug


def test_dtypes_convert_when_no_default_case_has_them():
    cases = cli.pick_cases(cli.parse_args(["--suites", "cell", "--dtypes", "bf16"]), "cpu")
    cpu_cells = cli.pick_cases(cli.parse_args(["--suites", "cell"]), "cpu")
    assert [c.name for c in cases] == [c.name.replace("fp32", "bf16") for c in cpu_cells]
    kept = cli.pick_cases(cli.parse_args(["--suites", "rnn", "--dtypes", "bf16"]), "cuda")
    assert kept and {c.dtype for c in kept} == {"bf16"} and {c.mode for c in kept} == {"fwdbwd"}


def test_each_dtype_listed_gets_its_cases():
    # fp32 has CPU cases and bf16 none: bf16 must not be dropped because fp32 was kept.
    cases = cli.pick_cases(cli.parse_args(["--suites", "cell", "--dtypes", "fp32", "bf16"]), "cpu")
    cpu_cells = cli.pick_cases(cli.parse_args(["--suites", "cell"]), "cpu")
    assert sorted(c.name for c in cases) == sorted(
        [c.name for c in cpu_cells] + [c.name.replace("fp32", "bf16") for c in cpu_cells])


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--seq-len", "-1"], ["--device", "tpu"], ["--device", "xla"]],
                         ids=str)
def test_bad_sizes_and_devices_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.resolve_device(cli.parse_args(argv).device)
    assert exit_info.value.code != 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err


def test_skip_existing_runs_only_what_this_commit_has_not_measured(tmp_path, capsys):
    base = ["--device", "cpu", "--quick", "--budget", "0.001", "--out", str(tmp_path), "--no-plots",
            "--suites", "cell", "--providers", "torch.nn"]
    assert cli.main([*base, "--filter", "fwd."]) == 0
    first = {(r["name"], r["provider"]): r["date"] for r in report.load_rows(tmp_path)}
    assert cli.main([*base, "--skip-existing"]) == 0  # fwd rows kept, only the fwdbwd ones run
    second = {(r["name"], r["provider"]): r["date"] for r in report.load_rows(tmp_path)}
    assert {k: second[k] for k in first} == first and len(second) > len(first)
    capsys.readouterr()
    assert cli.main([*base, "--skip-existing"]) == 0
    assert "already" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))  # results are written by rename
