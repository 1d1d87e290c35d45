"""Shared pieces of the examples: the offline corpus, a character vocabulary, the seqops/torch switch, a
progress bar (rich when it is there, plain lines otherwise), checkpoints and a few command-line flags."""

import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------------------
# Corpus: the Python standard library's own source, so every machine has it offline.


def stdlib_corpus(max_chars=400_000):
    """The top-level ``.py`` files of the standard library, in sorted name order, joined up to ``max_chars``.

    Top level only and sorted, so the text is the same on every run of one Python installation.
    """
    root = os.path.dirname(os.__file__)
    parts, total = [], 0
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "".join(parts)[:max_chars]


class CharVocab:
    """Characters <-> ids. Built from the corpus; saved in checkpoints as its string of characters."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def split_streams(ids, batch_size):
    """Cut a 1-D id tensor into ``batch_size`` contiguous streams [B, N], dropping the tail that doesn't fit.

    Row b is one long stretch of text, so the state at the end of one chunk is the right start for the next.
    """
    n = ids.numel() // batch_size
    return ids[: n * batch_size].view(batch_size, n)


# ------------------------------------------------------------------------------------------------------------
# The implementation switch: the same script on seqops or on torch.nn / torch.nn.functional.


def _seqops_api():
    import seqops

    return SimpleNamespace(
        name="seqops",
        LSTM=seqops.LSTM,
        GRU=seqops.GRU,
        MultiheadAttention=seqops.MultiheadAttention,
        attention=seqops.attention,
    )


def _torch_api():
    return SimpleNamespace(
        name="torch",
        LSTM=nn.LSTM,
        GRU=nn.GRU,
        MultiheadAttention=nn.MultiheadAttention,
        attention=F.scaled_dot_product_attention,
    )


def sequence_api(impl):
    """Modules and the attention function of ``impl`` ("seqops" or "torch"), with one interface."""
    if impl == "seqops":
        return _seqops_api()
    if impl == "torch":
        return _torch_api()
    raise ValueError(f"unknown --impl {impl!r}: expected 'seqops' or 'torch'")


# ------------------------------------------------------------------------------------------------------------
# Progress: a rich bar on a terminal, plain periodic lines elsewhere (logs, CI, pytest).


class Progress:
    """``with Progress(total, start) as bar: bar.advance(loss)``; ``bar.log(text)`` prints above the bar."""

    def __init__(self, total, start=0, enabled=True, description="train"):
        self.total, self.step, self.description = total, start, description
        self._rich = None
        if enabled and sys.stdout.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
                from rich.progress import Progress as RichProgress
            except ImportError:
                pass
            else:
                self._rich = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                )
        self._start_time = time.perf_counter()

    def __enter__(self):
        if self._rich is not None:
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, completed=self.step, info="")
        return self

    def __exit__(self, *exc):
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def advance(self, info=""):
        self.step += 1
        if self._rich is not None:
            self._rich.update(self._task, completed=self.step, info=info)

    def log(self, text):
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def elapsed(self):
        return time.perf_counter() - self._start_time


# ------------------------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(path, state):
    """Write atomically (temporary file, then rename): a run killed mid-save keeps its previous checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    # weights_only=True: a checkpoint is data, and loading one must not run code.
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------------------
# Flags every example shares.


def base_parser(description, steps, batch_size, lr, impls=("seqops", "torch")):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--impl", choices=impls, default="seqops",
                   help="run on seqops' modules/kernels or on torch.nn / F.scaled_dot_product_attention")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    return p


def setup(args):
    """Seed, threads and device from the shared flags; returns the torch.device."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is visible")
    return device


def clip_and_step(model, optimizer, clip):
    """Clip the global gradient norm (the classic cure for exploding RNN gradients), then step."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), clip) if clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def sample_next(logits, temperature, generator=None):
    """One id per row from [B, V] logits: greedy at temperature 0, else softmax(logits / temperature).

    Drawn on the CPU from ``generator``, so sampling text never moves the training run's random stream.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = F.softmax(logits.detach().float().cpu() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


def sync(device):
    # Timings on a GPU need the queued kernels finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)
