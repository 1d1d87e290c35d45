"""python -m benchmarks: time seqops against its peers and write benchmarks/results/<device>/.

  python -m benchmarks                         # the default suite of this machine (CUDA when visible)
  python -m benchmarks --quick                 # a few small cases, no torch.compile providers
  python -m benchmarks --headline              # only the eight headline.json cases
  python -m benchmarks --suites rnn --ops lstm --dtypes fp16 --modes fwd fwdbwd
  python -m benchmarks --suites attn --seq-len 1024 4096 --head-dim 64 --providers seqops sdpa-flash
  python -m benchmarks --list                  # print the cases and providers, run nothing
"""

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import cases as cases_mod
from benchmarks import env as env_mod
from benchmarks import report, runner, timing
from benchmarks.providers import all_provider_names

RESULTS = Path(__file__).resolve().parent / "results"


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:N")
    ap.add_argument("--quick", action="store_true", help="small cases, short timing, no torch.compile")
    ap.add_argument("--headline", action="store_true", help="only the headline.json cases")
    ap.add_argument("--suites", nargs="+", choices=cases_mod.SUITES)
    ap.add_argument("--ops", nargs="+", help="lstm gru rnn_tanh (layers and cells), lstm_cell ..., attn")
    ap.add_argument("--modes", nargs="+", choices=cases_mod.MODES)
    ap.add_argument("--dtypes", nargs="+", choices=tuple(cases_mod.DTYPES),
                    help="keep the selected cases of each of these dtypes; with size options, or for a "
                    "dtype that no selected case has, run every selected shape in it")
    ap.add_argument("--providers", nargs="+", choices=all_provider_names(), metavar="NAME",
                    help=f"some of {', '.join(all_provider_names())}; default: all of the device's, less "
                    "the torch.compile ones (compile-ref, flex) on the CPU and in --quick")
    ap.add_argument("--filter", nargs="+", metavar="TEXT", help="keep cases whose name contains any TEXT")
    sizes = ap.add_argument_group("sizes (each replaces that dimension of the selected cases by its values)")
    sizes.add_argument("--batch", nargs="+", type=positive_int)
    sizes.add_argument("--seq-len", nargs="+", type=positive_int, help="T for RNNs, L = S for attention")
    sizes.add_argument("--hidden", nargs="+", type=positive_int, help="H = I for cells and RNNs")
    sizes.add_argument("--heads", nargs="+", type=positive_int)
    sizes.add_argument("--head-dim", nargs="+", type=positive_int)
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<device-slug>)")
    ap.add_argument("--fresh", action="store_true", help="replace the folder's results instead of merging")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--list", action="store_true", help="print the cases and providers; run nothing")
    ap.add_argument("--replot", action="store_true",
                    help="redraw plots and headline.json from the results folder; run nothing")
    ap.add_argument("--time-limit", type=float, metavar="S",
                    help="start no case that the longest so far says would end after S seconds (results "
                    "are saved case by case anyway)")
    ap.add_argument("--skip-existing", action="store_true",
                    help="skip (case, provider) pairs the results folder already holds, ok, from this commit")
    ap.add_argument("--threads", type=int, help="CPU: torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--budget", type=float, help="CPU: seconds of timed rounds a case (default 1, quick 0.1)")
    ap.add_argument("--rep-ms", type=float, help="CUDA: ms of timed calls a provider (default 100, quick 50)")
    return ap.parse_args(argv)


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f"--device {name}: not a device torch knows ({error})") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: the benchmarks run on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is visible")
    return device


def pick_cases(args, device_type):
    base = cases_mod.headline_cases() if args.headline else cases_mod.default_cases(device_type, args.quick)
    dtypes = args.dtypes
    base = cases_mod.select(base, suites=args.suites, ops=args.ops, modes=args.modes, contains=args.filter)
    sized = cases_mod.override_sizes(base, B=args.batch, T=args.seq_len, L=args.seq_len, H=args.hidden,
                                     heads=args.heads, D=args.head_dim)
    if dtypes:
        resized = args.batch or args.seq_len or args.hidden or args.heads or args.head_dim
        picked = []
        for dtype in dtypes:
            # explicit sizes, or no selected case in this dtype: build each selected shape in it
            kept = [] if resized else cases_mod.select(sized, dtypes=[dtype])
            picked += kept or [replace(c, dtype=dtype) for c in sized]
        sized = cases_mod.dedupe(picked)
    return sized


def cpu_budget(args):
    if args.quick:
        return timing.CpuBudget(warmup_s=0.02, budget_s=args.budget or 0.1, min_rounds=3, min_sample_s=1e-3)
    return timing.CpuBudget(budget_s=args.budget or 1.0)


def write_plots(rows, out_dir):
    from benchmarks import plots  # matplotlib only when plotting

    return plots.write_plots(rows, out_dir)


def replot(out_dir, console):
    rows = report.load_rows(out_dir)
    if not rows:
        raise SystemExit(f"no results.json in {out_dir}")
    newest = max(rows, key=lambda r: r["date"] or "")
    env = {key: newest[key] for key in ("device", "commit", "date", "torch", "triton")}  # where they ran
    report.write_results(rows, out_dir, env, merge_existing=False)
    for table in report.summary_tables(rows):
        console.print(table)
    paths = write_plots(rows, out_dir)
    console.print(f"redrew headline.json{''.join(f', {p.name}' for p in paths)} in {out_dir}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and CI: keep rows on one line instead of rich's 80 columns
        console = Console(width=160)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    selected = [c for c in pick_cases(args, device.type)
                if runner.pending_providers(c, device.type, args.providers, args.quick)]
    if not selected:
        raise SystemExit("no benchmark case matches these options (see --list)")
    if args.list:
        for case in selected:
            names = [p.name for p in runner.pending_providers(case, device.type, args.providers, args.quick)]
            print(f"{case.name:<48} {' '.join(names)}")
        return 0
    if args.replot:
        return replot(args.out or RESULTS / env_mod.device_slug(device), console)
    if device.type == "cuda":
        # fp32 rows like for like: cuDNN (RNNs) defaults to TF32, cuBLAS matmuls (seqops' GEMMs) do not
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    env = env_mod.environment(device)
    out_dir = args.out or RESULTS / env["device_slug"]
    done = frozenset()
    if args.skip_existing:
        done = frozenset((r["name"], r["provider"]) for r in report.load_rows(out_dir)
                         if r.get("commit") == env["commit"] and r.get("status") == "ok")
        selected = [c for c in selected if runner.pending_providers(c, device.type, args.providers, args.quick, done)]
        if not selected:
            console.print(f"every selected case is in {out_dir} already (--skip-existing)")
            return 0
    console.print(f"[bold]seqops benchmarks[/bold] on {env['device']}: torch {env['torch']}, triton "
                  f"{env['triton']}, CUDA {env['cuda']}, commit {env['commit']}\n{env['seqops']}\n"
                  f"{len(selected)} cases -> {out_dir}")
    cores = os.cpu_count() or 1
    if device.type == "cpu" and env["load_avg"] is not None and env["load_avg"] > 0.5 * cores:
        console.print(f"[yellow]load average {env['load_avg']} on {cores} cores: other work is running, "
                      "CPU timings will be noisy[/yellow]")
    rep_ms = args.rep_ms or (50 if args.quick else 100)
    rows, start = [], time.perf_counter()
    stopped = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("", total=len(selected))
        stream = runner.run_cases(selected, device, env, args.providers, args.quick, cpu_budget(args),
                                  warmup_ms=25, rep_ms=rep_ms, done=done)
        progress.update(task, description=selected[0].name)
        longest, case_start = 0.0, time.perf_counter()
        try:
            for i, (case, case_rows) in enumerate(stream):
                rows.extend(case_rows)
                now = time.perf_counter()
                longest, case_start = max(longest, now - case_start), now
                # the next case would likely end past the limit: a cap that kills mid-case loses that case
                over_time = args.time_limit is not None and now - start + longest > args.time_limit
                progress.console.print(f"[bold]{case.name}[/bold]")
                for line in report.case_lines(case_rows):
                    progress.console.print(line)
                # written after every case, so an interrupted run keeps what it measured
                report.write_results(rows, out_dir, env, merge_existing=not args.fresh)
                nxt = selected[i + 1].name if i + 1 < len(selected) else "plots"
                progress.update(task, advance=1, description=nxt)
                if over_time and i + 1 < len(selected):
                    console.print(f"[yellow]--time-limit: {len(selected) - i - 1} cases not run[/yellow]")
                    break
        except (runner.StopRun, KeyboardInterrupt) as err:
            stopped = str(err) or "interrupted"
    if stopped is not None:  # what was measured is saved; plots are left to --replot
        report.write_results(rows, out_dir, env, merge_existing=not args.fresh)
        console.print(f"[red]stopped: {stopped}; {len(rows)} rows saved in {out_dir}[/red]")
        return 130 if stopped == "interrupted" else 1
    all_rows = report.write_results(rows, out_dir, env, merge_existing=not args.fresh)
    for table in report.summary_tables(rows):
        console.print(table)
    head = report.headline_table(report.headline(all_rows, env))
    if head is not None:
        console.print(head)
    plots = [] if args.no_plots else write_plots(all_rows, out_dir)
    console.print(f"{len(rows)} rows in {time.perf_counter() - start:.0f} s; wrote {out_dir}/results.csv, "
                  f"results.json, headline.json" + "".join(f", {p.name}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
