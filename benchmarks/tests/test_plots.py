"""The PNG plots, drawn from synthetic rows."""

from benchmarks import plots, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(**fields):
    r = {k: None for k in report.ROW_FIELDS}
    r.update({"status": "ok", "sweep": "", **fields})
    return r


def synthetic_rows():
    rows = []
    for provider, speed in (("seqops", 1.0), ("sdpa-flash", 1.3), ("sdpa-math", 4.0)):
        for L in (256, 512, 1024):
            rows.append(row(name=f"attn.fwd.B1.H1.L{L}.D64.bf16", suite="attn", mode="fwd", causal=False,
                            dtype="bf16", D=64, L=L, provider=provider, median_ms=speed * L / 256,
                            tflops=L / speed, sweep="seqlen" if L != 512 else "base+seqlen"))
    for provider, speed in (("seqops", 1.0), ("torch.nn", 2.0)):
        for sweep, key, values in (("batch", "B", (1, 4)), ("hidden", "H", (64, 128))):
            for v in values:
                shape = {"B": 4, "H": 64, key: v}
                rows.append(row(name=f"lstm.fwd.B{shape['B']}.T8.H{shape['H']}.fp32", suite="rnn", op="lstm",
                                mode="fwd", dtype="fp32", T=8, provider=provider, median_ms=speed * v,
                                us_per_step=speed * v * 125, sweep=sweep, **shape))
    rows.append(row(name="lstm_cell.fwd.B8.H32.fp32", suite="cell", provider="seqops", median_ms=1.0))
    rows.append(row(name="lstm_cell.fwd.B8.H32.fp32", suite="cell", provider="torch.nn", median_ms=3.0))
    rows.append(row(name="lstm_cell.fwd.B8.H32.fp32", suite="cell", provider="reference", status="failed"))
    return rows


def test_speedups_against_seqops():
    rows = synthetic_rows()
    assert plots.speedups(rows, "cell") == {"lstm_cell.fwd.B8.H32.fp32": {"torch.nn": 3.0}}
    attn = plots.speedups(rows, "attn")
    assert list(attn) == ["attn.fwd.B1.H1.L512.D64.bf16"]  # sweep-only points get no bars
    assert attn["attn.fwd.B1.H1.L512.D64.bf16"] == {"sdpa-flash": 1.3, "sdpa-math": 4.0}


def test_every_plot_is_written(tmp_path):
    paths = plots.write_plots(synthetic_rows(), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["attn_tflops_vs_seqlen.png", "rnn_us_per_step.png", "speedup_attn.png",
                     "speedup_cell.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000


def test_no_rows_no_plots(tmp_path):
    assert plots.write_plots([], tmp_path) == []


def test_speedup_bars_run_from_the_1x_line(monkeypatch, tmp_path):
    # On the log axis a bar from 0 has no visible start: a 0.5x bar must run left from 1x, a 2x bar right.
    times = (("a", "seqops", 1.0), ("a", "torch.nn", 0.5), ("b", "seqops", 1.0), ("b", "torch.nn", 2.0))
    rows = [row(name=n, suite="cell", provider=p, median_ms=ms) for n, p, ms in times]
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and path)
    plots.speedup_bars(rows, "cell", tmp_path)
    bars = [(p.get_x(), p.get_x() + p.get_width()) for p in drawn["fig"].axes[0].patches]
    assert sorted(tuple(sorted(b)) for b in bars) == [(0.5, 1.0), (1.0, 2.0)]
