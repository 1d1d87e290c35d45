"""headline.json (peer = fastest other provider, ratio = peer_ms / seqops_ms) and the CSV/JSON schema."""

import csv
import json

import pytest

from benchmarks import report
from benchmarks.cases import HEADLINE

ENV = {"device": "Test GPU", "device_slug": "test-gpu", "torch": "2.x", "triton": "3.x", "cuda": "13.0",
       "seqops": "seqops 0.1.0", "commit": "abc123", "date": "2026-01-01T00:00:00+00:00", "load_avg": 0.5}


def row(name, provider, ms, status="ok", tflops=None):
    r = {k: None for k in report.ROW_FIELDS}
    r.update(ENV, name=name, suite="attn" if name.startswith("attn") else "rnn", provider=provider,
             status=status, note="" if status == "ok" else "why", sweep="", tflops=tflops,
             median_ms=ms if status == "ok" else None, p20_ms=ms, p80_ms=ms)
    return r


NAME = HEADLINE[4]


def test_peer_is_fastest_other_provider():
    rows = [row(NAME, "seqops", 2.0, tflops=100.0), row(NAME, "sdpa-flash", 3.0), row(NAME, "sdpa-math", 9.0),
            row(NAME, "sdpa-cudnn", 1.0, status="failed"), row("other", "faster", 0.1)]
    h = report.headline_row(NAME, rows)
    assert h == {"name": NAME, "seqops_ms": 2.0, "peer": "sdpa-flash", "peer_ms": 3.0, "ratio": 1.5,
                 "tflops": 100.0}


def test_ratio_below_one_when_seqops_is_slower():
    h = report.headline_row(NAME, [row(NAME, "seqops", 4.0), row(NAME, "flex", 1.0)])
    assert h["ratio"] == pytest.approx(0.25) and h["peer"] == "flex"


@pytest.mark.parametrize("present", [["seqops"], ["flex"], []])
def test_missing_side_gives_nulls(present):
    rows = [row(NAME, p, 1.0) for p in present] + [row(NAME, "seqops", None, status="unavailable")] * (
        "seqops" not in present)
    h = report.headline_row(NAME, rows)
    assert h["ratio"] is None
    assert (h["seqops_ms"] is None) == ("seqops" not in present)
    assert (h["peer"] is None) == ("flex" not in present)


def test_headline_document_schema():
    doc = report.headline([row(NAME, "seqops", 1.0)], ENV)
    assert set(doc) == {"device", "commit", "date", "torch", "triton", "rows"}
    assert [r["name"] for r in doc["rows"]] == list(HEADLINE)
    assert all(set(r) == set(report.HEADLINE_FIELDS) for r in doc["rows"])


def test_written_files_schema_and_merge(tmp_path):
    first = [row(NAME, "seqops", 2.0), row(NAME, "flex", 3.0)]
    report.write_results(first, tmp_path, ENV)
    second = [row(NAME, "seqops", 1.0), row(HEADLINE[0], "torch.nn", 5.0)]
    written = report.write_results(second, tmp_path, ENV)
    assert len(written) == 3  # seqops replaced, flex kept, one new

    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.ROW_FIELDS
        csv_rows = list(reader)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["columns"] == list(report.ROW_FIELDS) and len(data["rows"]) == len(csv_rows) == 3
    for r in data["rows"]:
        for key in ("device", "torch", "triton", "cuda", "commit", "date"):
            assert r[key] == ENV[key]
    seqops = next(r for r in data["rows"] if r["provider"] == "seqops")
    assert seqops["median_ms"] == 1.0
    head = json.loads((tmp_path / "headline.json").read_text())
    by_name = {r["name"]: r for r in head["rows"]}
    assert by_name[NAME]["ratio"] == 3.0 and by_name[NAME]["peer"] == "flex"

    report.write_results([row(NAME, "flex", 3.0)], tmp_path, ENV, merge_existing=False)
    assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 1


def test_terminal_output_mentions_every_provider():
    rows = [row(NAME, "seqops", 2.0, tflops=1.0), row(NAME, "flex", 3.0, tflops=0.7),
            row(NAME, "sdpa-cudnn", None, status="unavailable")]
    lines = report.case_lines(rows)
    assert len(lines) == 3 and "1.50x" in lines[1] and "unavailable" in lines[2]
    (table,) = report.summary_tables(rows)
    assert table.row_count == 3


def test_headline_table_only_when_something_ran():
    assert report.headline_table(report.headline([], ENV)) is None
    table = report.headline_table(report.headline([row(NAME, "seqops", 2.0), row(NAME, "flex", 3.0)], ENV))
    assert table.row_count == len(HEADLINE)


def test_headline_takes_the_rows_of_its_own_commit():
    # a folder merged over runs: an older commit's faster peer must not be set against this commit's seqops
    old_peer = {**row(NAME, "sdpa-flash", 1.0), "commit": "old999"}
    h = report.headline([row(NAME, "seqops", 2.0), row(NAME, "sdpa-flash", 3.0), old_peer], ENV)
    assert h["commit"] == "abc123" and h["rows"][HEADLINE.index(NAME)]["peer_ms"] == 3.0
