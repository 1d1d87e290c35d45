"""Providers: who computes a case (seqops, torch.nn, cuDNN off, SDPA backends, FlexAttention, the
reference, torch.compile of the reference, a Python loop). Each is set up lazily, so a missing one is a
row, not a crash."""

from benchmarks.providers.attention import ATTENTION_PROVIDERS
from benchmarks.providers.attention_varlen import VARLEN_PROVIDERS
from benchmarks.providers.base import Provider, Unavailable, Unsupported
from benchmarks.providers.cells import CELL_PROVIDERS
from benchmarks.providers.rnn import RNN_PROVIDERS

PROVIDERS = {"cell": CELL_PROVIDERS, "rnn": RNN_PROVIDERS, "attn": ATTENTION_PROVIDERS, "varlen": VARLEN_PROVIDERS}


def providers_for(suite, device_type, names=None, quick=False):
    """The providers of a suite on a device. names picks some (and may include compiling ones anywhere);
    by default compiling providers are left out of quick runs and of CPU runs (minutes of compilation)."""
    chosen = []
    for p in PROVIDERS[suite]:
        if device_type not in p.devices:
            continue
        if names is not None:
            if p.name in names:
                chosen.append(p)
        elif not (p.compiles and (quick or device_type == "cpu")):
            chosen.append(p)
    return chosen


def all_provider_names():
    return sorted({p.name for ps in PROVIDERS.values() for p in ps})


__all__ = ["PROVIDERS", "Provider", "Unavailable", "Unsupported", "all_provider_names", "providers_for"]
