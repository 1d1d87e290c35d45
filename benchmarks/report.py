"""Outputs: the terminal table, results.csv / results.json (every row stamped with device, versions,
commit and date) and headline.json (seqops against the fastest other provider on the headline shapes)."""

import csv
import io
import json
import math
import os
from pathlib import Path

from rich.table import Table

from benchmarks.cases import ATTENTION_SUITES, HEADLINE

ROW_FIELDS = (
    "name", "suite", "op", "mode", "dtype", "provider", "status", "note",
    "median_ms", "p20_ms", "p80_ms", "samples", "us_per_step", "tflops", "peak_mem_mb", "rotation", "flops",
    "B", "T", "I", "H", "heads", "L", "S", "D", "causal", "sweep",
    "device", "device_slug", "torch", "triton", "cuda", "cudnn", "gpu_driver", "tf32", "seqops", "commit", "date",
    "load_avg",
)  # fmt: skip
HEADLINE_FIELDS = ("name", "seqops_ms", "peer", "peer_ms", "ratio", "tflops")


def ok(row):
    return row.get("status") == "ok" and row.get("median_ms") is not None


def headline_row(name, rows):
    """seqops against the fastest other provider that ran the case; ratio = peer_ms / seqops_ms (> 1: seqops
    is faster). None where seqops or every peer is missing."""
    case_rows = [r for r in rows if r["name"] == name and ok(r)]
    mine = next((r for r in case_rows if r["provider"] == "seqops"), None)
    peers = [r for r in case_rows if r["provider"] != "seqops"]
    peer = min(peers, key=lambda r: r["median_ms"]) if peers else None
    out = dict.fromkeys(HEADLINE_FIELDS)
    out["name"] = name
    if mine is not None:
        out["seqops_ms"] = mine["median_ms"]
        out["tflops"] = mine["tflops"]
    if peer is not None:
        out["peer"], out["peer_ms"] = peer["provider"], peer["median_ms"]
    if mine is not None and peer is not None and mine["median_ms"] > 0:
        out["ratio"] = peer["median_ms"] / mine["median_ms"]
    return out


def headline(rows, env, names=HEADLINE):
    """The headline rows from the rows of env's commit where there are any (a folder merged over several runs
    must not set one commit's seqops against another's peers, under the one commit it names)."""
    same_commit = [r for r in rows if r.get("commit") == env["commit"]]
    rows = same_commit or rows
    return {
        "device": env["device"],
        "commit": env["commit"],
        "date": env["date"],
        "torch": env["torch"],
        "triton": env["triton"],
        "rows": [headline_row(name, rows) for name in names],
    }


def merge(old_rows, new_rows):
    """New rows replace old rows of the same (case, provider); the rest of the old rows stay, so a GPU
    session can run the suites in several commands into one folder."""
    keyed = {(r["name"], r["provider"]): r for r in old_rows}
    keyed.update({(r["name"], r["provider"]): r for r in new_rows})
    return list(keyed.values())


def load_rows(out_dir):
    path = Path(out_dir) / "results.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["rows"]


def _json_safe(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(rows, out_dir, env, merge_existing=True):
    """Writes results.csv, results.json and headline.json into out_dir; returns the rows written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if merge_existing:
        rows = merge(load_rows(out_dir), rows)
    rows = [{k: _json_safe(row.get(k)) for k in ROW_FIELDS} for row in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    _replace(out_dir / "results.csv", text.getvalue())
    _replace(out_dir / "results.json", json.dumps({"columns": list(ROW_FIELDS), "rows": rows}, indent=1))
    _replace(out_dir / "headline.json", json.dumps(headline(rows, env), indent=2))
    return rows


def _replace(path, text):
    # write-then-rename: a run killed mid-write (a session's time cap) leaves the previous file, not half of one
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- terminal


def fmt_time(row):
    if not ok(row):
        return f"[dim]{row['status']}[/dim]"
    return f"{row['median_ms']:.4g} ms [dim]({row['p20_ms']:.3g}–{row['p80_ms']:.3g})[/dim]"


def fmt_rate(row):
    if not ok(row):
        return ""
    if row["suite"] in ATTENTION_SUITES:
        return f"{row['tflops']:.3g} TFLOP/s"
    return f"{row['us_per_step']:.4g} µs/step"


def fmt_vs_seqops(row, seqops_ms):
    """How many times slower this provider is than seqops (>1: seqops wins)."""
    if not ok(row) or seqops_ms is None or row["provider"] == "seqops":
        return ""
    ratio = row["median_ms"] / seqops_ms
    color = "green" if ratio >= 1 else "red"
    return f"[{color}]{ratio:.2f}x[/{color}]"


def case_lines(rows):
    """One compact line per provider, printed as each case finishes."""
    seqops = next((r["median_ms"] for r in rows if r["provider"] == "seqops" and ok(r)), None)
    lines = []
    for r in rows:
        detail = f"{fmt_time(r)}  {fmt_rate(r)}  {fmt_vs_seqops(r, seqops)}" if ok(r) else \
            f"[yellow]{r['status']}[/yellow]: [dim]{r['note']}[/dim]"
        lines.append(f"    {r['provider']:<17} {detail}")
    return lines


def summary_tables(rows):
    """One rich Table per suite: cases down, each provider's time, rate, peak memory and seqops' speed-up."""
    tables = []
    for suite, title in (("cell", "Cells"), ("rnn", "RNN layers"), ("attn", "Attention"),
                         ("varlen", "Attention over packed sequences")):
        suite_rows = [r for r in rows if r["suite"] == suite]
        if not suite_rows:
            continue
        table = Table(title=f"{title} — {suite_rows[0]['device']}", show_lines=False)
        for col in ("case", "provider", "median (p20–p80)", "rate", "peak MiB", "provider / seqops"):
            left = col in ("case", "provider")
            table.add_column(col, justify="left" if left else "right", no_wrap=left)
        last = None
        for name in dict.fromkeys(r["name"] for r in suite_rows):
            case_rows = [r for r in suite_rows if r["name"] == name]
            seqops = next((r["median_ms"] for r in case_rows if r["provider"] == "seqops" and ok(r)), None)
            for r in case_rows:
                peak = "" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
                time_cell = fmt_time(r) if ok(r) else f"[yellow]{r['status']}[/yellow]"
                table.add_row(name if name != last else "", r["provider"], time_cell, fmt_rate(r), peak,
                              fmt_vs_seqops(r, seqops))
                last = name
        tables.append(table)
    return tables


def headline_table(doc):
    """headline.json as a table, or None when none of its cases ran here."""
    if not any(r["seqops_ms"] is not None or r["peer_ms"] is not None for r in doc["rows"]):
        return None
    table = Table(title=f"Headline — {doc['device']}")
    for col in ("case", "seqops ms", "peer", "peer ms", "peer / seqops", "seqops TFLOP/s"):
        table.add_column(col, justify="left" if col in ("case", "peer") else "right", no_wrap=col == "case")

    def num(value, spec):
        return "" if value is None else format(value, spec)

    for r in doc["rows"]:
        table.add_row(r["name"], num(r["seqops_ms"], ".4g"), r["peer"] or "", num(r["peer_ms"], ".4g"),
                      num(r["ratio"], ".2f"), num(r["tflops"], ".3g"))
    return table
