"""PNG plots of a results folder (matplotlib, Agg): attention TFLOP/s against sequence length, RNN time
per step against batch and hidden size, seqops' speed-up over every other provider."""

from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.cases import is_base, sweep_tags  # noqa: E402
from benchmarks.report import ok  # noqa: E402


def _series(rows, x_key, y_key):
    """{provider: sorted [(x, y)]} of the rows that ran."""
    series = defaultdict(list)
    for r in rows:
        if ok(r) and r[y_key] is not None:
            series[r["provider"]].append((r[x_key], r[y_key]))
    return {p: sorted(pts) for p, pts in sorted(series.items())}


def _line_axes(ax, series, xlabel, ylabel, title, logy=False):
    for provider, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=provider, linewidth=2.5 if provider == "seqops" else 1.2)
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attention_tflops(rows, out_dir):
    groups = defaultdict(list)
    for r in rows:
        if r["suite"] == "attn" and "seqlen" in sweep_tags(r["sweep"]):
            groups[(r["mode"], bool(r["causal"]), r["dtype"], r["D"])].append(r)
    groups = {k: v for k, v in groups.items() if _series(v, "L", "tflops")}
    if not groups:
        return None
    cols = min(2, len(groups))
    rows_ = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 4 * rows_), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, ((mode, causal, dtype, D), group) in zip(axes.flat, sorted(groups.items()), strict=False):
        title = f"{mode}{' causal' if causal else ''} D={D} {dtype}"
        _line_axes(ax, _series(group, "L", "tflops"), "sequence length", "TFLOP/s", title)
    return _save(fig, Path(out_dir) / "attn_tflops_vs_seqlen.png")


def rnn_time_per_step(rows, out_dir):
    groups = defaultdict(list)
    for r in rows:
        if r["suite"] == "rnn" and sweep_tags(r["sweep"]) & {"batch", "hidden"}:
            groups[(r["op"], r["mode"], r["dtype"])].append(r)
    groups = {k: v for k, v in groups.items() if _series(v, "B", "us_per_step")}
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.6 * len(groups)), squeeze=False)
    for row_axes, ((op, mode, dtype), group) in zip(axes, sorted(groups.items()), strict=True):
        axes_spec = (("batch", "B", "batch"), ("hidden", "H", "hidden size"))
        for ax, (sweep, key, label) in zip(row_axes, axes_spec, strict=True):
            sub = [r for r in group if sweep in sweep_tags(r["sweep"])]
            fixed = "H" if sweep == "batch" else "B"
            shape = f"{fixed}={sub[0][fixed]} T={sub[0]['T']}" if sub else ""
            _line_axes(ax, _series(sub, key, "us_per_step"), label, "µs per step",
                       f"{op} {mode} {dtype} {shape}", logy=True)
    return _save(fig, Path(out_dir) / "rnn_us_per_step.png")


def speedups(rows, suite):
    """{case name: {provider: provider_ms / seqops_ms}} for base cases seqops ran (not sweep-only points)."""
    out = {}
    for name in dict.fromkeys(r["name"] for r in rows if r["suite"] == suite and is_base(r["sweep"])):
        case_rows = [r for r in rows if r["name"] == name and ok(r)]
        mine = next((r for r in case_rows if r["provider"] == "seqops"), None)
        if mine is None:
            continue
        ratios = {r["provider"]: r["median_ms"] / mine["median_ms"] for r in case_rows if r is not mine}
        if ratios:
            out[name] = ratios
    return out


def speedup_bars(rows, suite, out_dir):
    data = speedups(rows, suite)
    if not data:
        return None
    providers = sorted({p for ratios in data.values() for p in ratios})
    names = list(data)
    height = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.3 * len(names) * max(1, len(providers) / 2)))
    for i, provider in enumerate(providers):
        ys = [j + i * height for j in range(len(names))]
        ratios = [data[n].get(provider, float("nan")) for n in names]
        # On a log axis a bar from 0 has no start: each bar runs from the 1x line, right if seqops is faster.
        ax.barh(ys, [r - 1.0 for r in ratios], left=1.0, height=height, label=provider)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    # ratios as '0.5x', '2x' on both major and minor ticks, not matplotlib's 10^0 and 2x10^0
    ratio_format = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}x")
    ax.xaxis.set_major_formatter(ratio_format)
    ax.xaxis.set_minor_formatter(ratio_format)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))], names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="provider time / seqops time (>1: seqops faster)", title=f"seqops speed-up, {suite}")
    ax.legend(fontsize=7)
    return _save(fig, Path(out_dir) / f"speedup_{suite}.png")


def write_plots(rows, out_dir):
    """Every plot the rows allow; returns the paths written."""
    paths = [attention_tflops(rows, out_dir), rnn_time_per_step(rows, out_dir)]
    paths += [speedup_bars(rows, suite, out_dir) for suite in ("cell", "rnn", "attn", "varlen")]
    return [p for p in paths if p is not None]
