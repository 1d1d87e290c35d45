"""The seqops benchmark suite: `python -m benchmarks` (or `make bench`).

Cases (cases.py) are timed for every provider (providers/) by the runner (runner.py) with the device's timer
(timing.py); report.py writes the table, CSV/JSON and headline.json, plots.py the PNGs.
"""
