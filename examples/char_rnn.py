"""Character-level language model: a multi-layer LSTM (or GRU) learns to write Python, one character at a
time.

The classic char-RNN recipe on seqops' drop-in ``seqops.LSTM`` / ``seqops.GRU``:
- corpus: the standard library's own ``.py`` files (offline on every machine), cut into ``--batch-size``
  contiguous streams;
- truncated backpropagation through time: each step trains on the next ``--seq-len`` characters of every
  stream and hands the final (detached) state to the next chunk, so the model sees context longer than one
  chunk;
- gradient clipping, periodic loss and sampled text, checkpoint save / ``--resume``;
- ``--impl torch`` runs the very same script on ``torch.nn``; ``--impl both`` runs both from one seed and
  prints the two loss curves side by side with the speed-up. The state_dicts are interchangeable, so a
  checkpoint written by one implementation resumes under the other.

    python examples/char_rnn.py                                  # CPU, a few minutes
    python examples/char_rnn.py --impl both --steps 100          # same loss curve, and the speed-up
    python examples/char_rnn.py --device cuda --hidden 1024 --layers 3 --batch-size 128 --seq-len 256 \
        --steps 5000
"""

import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    CharVocab,
    Progress,
    base_parser,
    clip_and_step,
    load_checkpoint,
    sample_next,
    save_checkpoint,
    sequence_api,
    setup,
    split_streams,
    stdlib_corpus,
    sync,
)

# On --resume these come from the checkpoint, not from the command line: the model's shape, and the data
# layout (streams, chunk length) the carried state belongs to, so the run continues exactly where it stopped.
RESTORED_FLAGS = ("cell", "embed", "hidden", "layers", "dropout", "batch_size", "seq_len", "corpus_chars")


class CharRNN(nn.Module):
    """Embedding -> multi-layer LSTM/GRU -> linear read-out to next-character logits."""

    def __init__(self, api, cell, vocab_size, embed, hidden, layers, dropout):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        rnn = {"lstm": api.LSTM, "gru": api.GRU}[cell]
        self.rnn = rnn(embed, hidden, layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids, state=None):
        # ids: [B, T] -> logits [B, T, V]; state: (h, c) [layers, B, H] each for LSTM, h for GRU
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state


def detach(state):
    # Truncated BPTT: keep the values, cut the graph, so backward stops at the chunk boundary.
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def sample(model, vocab, prompt, length, temperature, generator):
    """Continue ``prompt`` by ``length`` characters, one character at a time, carrying the state."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, state = model(vocab.encode(prompt).to(device)[None])
    out = []
    for _ in range(length):
        nxt = sample_next(logits[:, -1], temperature, generator)
        out.append(nxt.item())
        logits, state = model(nxt[:, None], state)
    model.train(was_training)
    return prompt + vocab.decode(out)


def parse_args(argv):
    p = base_parser(__doc__.split("\n")[0], steps=300, batch_size=32, lr=3e-3,
                    impls=("seqops", "torch", "both"))
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0, help="between RNN layers")
    p.add_argument("--seq-len", type=int, default=64, help="characters per truncated-BPTT chunk")
    p.add_argument("--corpus-chars", type=int, default=400_000, help="how much stdlib source to train on")
    p.add_argument("--sample-every", type=int, default=100, help="print a sample every N steps (0: never)")
    p.add_argument("--sample-len", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--prompt", default="def ")
    p.add_argument("--checkpoint", default=None, help="file to save to (and resume from with --resume)")
    p.add_argument("--save-every", type=int, default=100, help="save every N steps (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    return p.parse_args(argv)


def train(args):
    """One training run; returns {"losses": per-step losses, "start_step", "step_seconds", "sample", ...}."""
    device = setup(args)
    api = sequence_api(args.impl)
    ckpt = None
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        ckpt = load_checkpoint(args.checkpoint)
        for flag in RESTORED_FLAGS:
            setattr(args, flag, ckpt["config"][flag])

    text = stdlib_corpus(args.corpus_chars)
    vocab = CharVocab(ckpt["config"]["vocab"]) if ckpt else CharVocab.from_text(text)
    streams = split_streams(vocab.encode(text), args.batch_size).to(device)  # [B, N]
    chunks = (streams.shape[1] - 1) // args.seq_len
    if chunks < 1:
        raise SystemExit(f"--corpus-chars {args.corpus_chars} is too short for --batch-size "
                         f"{args.batch_size} x --seq-len {args.seq_len}")

    model = CharRNN(api, args.cell, len(vocab), args.embed, args.hidden, args.layers, args.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = torch.Generator().manual_seed(args.seed)
    start, state = 0, None
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        state = None if ckpt["state"] is None else tuple(s.to(device) for s in ckpt["state"])
        state = state[0] if (state is not None and args.cell == "gru") else state
        torch.set_rng_state(ckpt["rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        sampler.set_state(ckpt["sampler_rng"])

    def checkpoint(step):
        parts = state if isinstance(state, tuple) else [state]
        st = None if state is None else tuple(s.cpu() for s in parts)
        config = {flag: getattr(args, flag) for flag in RESTORED_FLAGS} | {"vocab": vocab.chars}
        save_checkpoint(args.checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "state": st,
            "rng": torch.get_rng_state(), "sampler_rng": sampler.get_state(), "config": config,
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "impl": args.impl,
        })

    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{args.impl}] {args.cell.upper()} {args.layers}x{args.hidden}, {n_params / 1e6:.2f}M params, "
          f"vocab {len(vocab)}, corpus {len(text):,} chars as {args.batch_size} streams x {chunks} chunks of "
          f"{args.seq_len}, device {device}" + (f", resumed at step {start}" if ckpt else ""), flush=True)

    losses, step_seconds, sample_text = [], [], None
    model.train()
    with Progress(args.steps, start, enabled=not args.no_progress, description=args.impl) as bar:
        for step in range(start, args.steps):
            c = step % chunks
            if c == 0:
                state = None  # back at the start of the streams: no context to carry over
            x = streams[:, c * args.seq_len:(c + 1) * args.seq_len]
            y = streams[:, c * args.seq_len + 1:(c + 1) * args.seq_len + 1]

            t0 = time.perf_counter()
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            clip_and_step(model, optimizer, args.clip)
            state = detach(state)
            loss = loss.item()  # also waits for the device
            step_seconds.append(time.perf_counter() - t0)
            losses.append(loss)

            done = step + 1
            bar.advance(f"loss {loss:.3f}")
            if done % args.log_every == 0 or done == args.steps:
                window = losses[-args.log_every:]
                mean, seconds = sum(window) / len(window), sum(step_seconds[-len(window):])
                bar.log(f"[{args.impl}] step {done:5d}  loss {mean:.4f} ({mean / math.log(2):.3f} bits/char)"
                        f"  {args.batch_size * args.seq_len * len(window) / seconds:,.0f} chars/s")
            if args.sample_every and (done % args.sample_every == 0 or done == args.steps):
                sample_text = sample(model, vocab, args.prompt, args.sample_len, args.temperature, sampler)
                bar.log(f"----- sample at step {done} -----\n{sample_text}\n" + "-" * 32)
            if args.checkpoint and (done % args.save_every == 0 or done == args.steps):
                checkpoint(done)
    sync(device)
    return {"impl": args.impl, "start_step": start, "losses": losses, "step_seconds": step_seconds,
            "sample": sample_text, "elapsed": bar.elapsed()}


def steady_seconds_per_step(result):
    # The first steps pay one-off costs (allocator warm-up, lazy init, autotuning on a GPU): leave them out.
    times = result["step_seconds"]
    steady = times[min(3, len(times) - 1):]
    return sorted(steady)[len(steady) // 2]


def compare(args):
    """--impl both: torch.nn then seqops from the same seed; loss curves side by side and the speed-up."""
    if args.checkpoint:
        raise SystemExit("--impl both compares two fresh runs; drop --checkpoint")
    results = {}
    for impl in ("torch", "seqops"):
        run_args = type(args)(**vars(args))
        run_args.impl = impl
        results[impl] = train(run_args)
    t, s = results["torch"], results["seqops"]
    print("\n  step   torch.nn loss   seqops loss")
    for i in range(len(t["losses"])):
        if i == 0 or (i + 1) % args.log_every == 0 or i + 1 == len(t["losses"]):
            print(f"{i + 1:6d}   {t['losses'][i]:13.4f}   {s['losses'][i]:11.4f}")
    ts, ss = steady_seconds_per_step(t), steady_seconds_per_step(s)
    print(f"median step time: torch.nn {ts * 1e3:.1f} ms, seqops {ss * 1e3:.1f} ms -> speed-up "
          f"{ts / ss:.2f}x on {args.device} ({torch.get_num_threads()} threads)")
    return {"torch": t, "seqops": s, "speedup": ts / ss}


def main(argv=None):
    args = parse_args(argv)
    return compare(args) if args.impl == "both" else train(args)


if __name__ == "__main__":
    main()
