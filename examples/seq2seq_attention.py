"""Sequence-to-sequence with attention: a GRU encoder-decoder learns to reverse (or sort) strings of digits.

The textbook model (Bahdanau et al. 2015, in Luong et al.'s "general" form) on seqops:
- encoder: a bidirectional ``seqops.GRU`` over the packed, variable-length source;
- decoder: a ``seqops.GRU`` over the target (teacher forcing in training), whose outputs query the encoder
  states through ``seqops.attention`` with a boolean mask that hides the padding;
- greedy decoding one token at a time, the exact-match accuracy on held-out strings, and the attention map of
  one example printed as text (for reversal, the anti-diagonal).
Training data is drawn fresh every step, so the model cannot memorise it.

    python examples/seq2seq_attention.py                      # reverse, CPU, about a minute
    python examples/seq2seq_attention.py --task sort --steps 3000
    python examples/seq2seq_attention.py --device cuda --hidden 512 --max-len 40 --batch-size 512
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Progress, base_parser, clip_and_step, sequence_api, setup, sync  # noqa: E402

PAD, BOS, EOS = 0, 1, 2
SYMBOLS = "_<>0123456789"  # ids 0..12: padding, begin, end, then the digits
TASKS = {"reverse": lambda digits: digits.flip(0), "sort": lambda digits: digits.sort().values}


def make_batch(task, batch_size, min_len, max_len, generator):
    """Random digit strings and their transduction, padded: src [B, S], src_len [B], tgt_in / tgt_out [B, T].

    tgt_in is BOS + target and tgt_out is target + EOS (the decoder predicts the next token).
    """
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)
    src = torch.full((batch_size, max_len), PAD)
    tgt_in = torch.full((batch_size, max_len + 1), PAD)
    tgt_out = torch.full((batch_size, max_len + 1), PAD)
    for b, n in enumerate(lengths.tolist()):
        digits = torch.randint(3, 13, (n,), generator=generator)
        target = TASKS[task](digits)
        src[b, :n] = digits
        tgt_in[b, 0], tgt_in[b, 1:n + 1] = BOS, target
        tgt_out[b, :n], tgt_out[b, n] = target, EOS
    return src, lengths, tgt_in, tgt_out


def text(ids):
    return "".join(SYMBOLS[i] for i in ids)


class Seq2SeqAttention(nn.Module):
    def __init__(self, api, embed, hidden):
        super().__init__()
        vocab = len(SYMBOLS)
        self.attention = api.attention
        self.src_embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.encoder = api.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)  # both final encoder states -> the decoder's first state
        self.key = nn.Linear(2 * hidden, hidden, bias=False)  # Luong "general": score = dec . W enc
        self.decoder = api.GRU(embed, hidden, batch_first=True)
        self.readout = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, vocab))

    def encode(self, src, src_len):
        # src: [B, S] -> memory [B, S, 2H] (the values), keys [B, S, H], keep [B, 1, 1, S] (True = a real
        # token), h0 [1, B, H]
        packed = pack_padded_sequence(self.src_embed(src), src_len.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, h = self.encoder(packed)  # h: [2, B, H], forward and backward final states at each true length
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h0 = torch.tanh(self.bridge(torch.cat([h[0], h[1]], dim=-1)))[None]
        keep = (src != PAD)[:, None, None, :]
        return memory, self.key(memory), keep, h0

    def decode(self, tgt_in, encoded, h):
        # tgt_in: [B, T] -> logits [B, T, V], h [1, B, H], queries [B, T, H]
        memory, keys, keep, _ = encoded
        queries, h = self.decoder(self.tgt_embed(tgt_in), h)
        # One head: q [B, 1, T, H], k [B, 1, S, H], v [B, 1, S, 2H] -> context [B, T, 2H]
        context = self.attention(queries[:, None], keys[:, None], memory[:, None], attn_mask=keep)[:, 0]
        return self.readout(torch.cat([queries, context], dim=-1)), h, queries

    def forward(self, src, src_len, tgt_in):
        encoded = self.encode(src, src_len)
        return self.decode(tgt_in, encoded, encoded[3])[0]

    @torch.no_grad()
    def greedy(self, src, src_len, max_out):
        """Decode one token at a time, feeding back the argmax: ids [B, T], decoder queries [B, T, H]."""
        encoded = self.encode(src, src_len)
        h, token = encoded[3], torch.full((src.shape[0], 1), BOS, device=src.device)
        ids, queries = [], []
        for _ in range(max_out):
            logits, h, q = self.decode(token, encoded, h)
            token = logits[:, -1].argmax(-1, keepdim=True)
            ids.append(token)
            queries.append(q)
            if (torch.cat(ids, 1) == EOS).any(1).all():
                break
        return torch.cat(ids, 1), torch.cat(queries, 1), encoded


def strip(ids):
    """Token ids up to (not including) the first EOS."""
    ids = ids.tolist()
    return ids[: ids.index(EOS)] if EOS in ids else ids


def exact_match(model, data, max_len):
    src, src_len, _, tgt_out = data
    pred, _, _ = model.greedy(src, src_len, max_len + 1)
    hits = [strip(p) == strip(t) for p, t in zip(pred.cpu(), tgt_out.cpu())]
    return sum(hits) / len(hits)


def attention_map(model, src, src_len, max_len):
    """The attention weights of one greedy decode, as text: a row per output token, a column per input digit.

    seqops.attention returns only the attended values (the fused kernel never forms the weights), so the
    weights are recomputed here from the same queries and keys, for display.
    """
    pred, queries, (_, keys, _, _) = model.greedy(src, src_len, max_len + 1)
    n, out = int(src_len[0]), (strip(pred[0].cpu()) + [EOS])[: queries.shape[1]]  # no EOS: cut at max_out
    scores = queries[0, : len(out)] @ keys[0, :n].T / math.sqrt(keys.shape[-1])  # [T, S]
    weights = scores.softmax(-1).cpu()
    shades = " .:-=+*#%@"
    lines = ["      " + " ".join(text(src[0, :n].tolist())), "      " + "-" * (2 * n - 1)]
    for t, token in enumerate(out):
        row = " ".join(shades[min(int(w * len(shades)), len(shades) - 1)] for w in weights[t].tolist())
        lines.append(f"  {text([token])} | {row}")
    return "\n".join(lines)


def parse_args(argv):
    p = base_parser(__doc__.split("\n")[0], steps=1500, batch_size=64, lr=3e-3)
    p.set_defaults(log_every=100)
    p.add_argument("--task", choices=sorted(TASKS), default="reverse")
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--min-len", type=int, default=3)
    p.add_argument("--max-len", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=1000, help="held-out strings for the exact match")
    p.add_argument("--eval-every", type=int, default=250)
    args = p.parse_args(argv)
    if not 1 <= args.min_len <= args.max_len:
        p.error("need 1 <= --min-len <= --max-len")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    model = Seq2SeqAttention(sequence_api(args.impl), args.embed, args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_gen = torch.Generator().manual_seed(args.seed)
    # A separate stream for the held-out set, so it is the same whatever the training length.
    held_out_gen = torch.Generator().manual_seed(10**6)
    held_out = make_batch(args.task, args.eval_size, args.min_len, args.max_len, held_out_gen)
    held_out = tuple(t.to(device) for t in held_out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{args.impl}] {args.task} digit strings of length {args.min_len}..{args.max_len}, GRU "
          f"encoder-decoder (hidden {args.hidden}) with attention, {n_params / 1e6:.2f}M params, "
          f"device {device}",
          flush=True)

    losses, accuracy = [], []
    with Progress(args.steps, enabled=not args.no_progress, description=args.task) as bar:
        for step in range(args.steps):
            model.train()
            src, src_len, tgt_in, tgt_out = (t.to(device) for t in make_batch(
                args.task, args.batch_size, args.min_len, args.max_len, train_gen))
            logits = model(src, src_len, tgt_in)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
            loss.backward()
            clip_and_step(model, optimizer, args.clip)
            losses.append(loss.item())

            done = step + 1
            bar.advance(f"loss {losses[-1]:.3f}")
            if done % args.log_every == 0 or done == args.steps:
                window = losses[-args.log_every:]
                bar.log(f"step {done:5d}  loss {sum(window) / len(window):.4f}  ({bar.elapsed():.0f} s)")
            if done % args.eval_every == 0 or done == args.steps:
                model.eval()
                accuracy.append((done, exact_match(model, held_out, args.max_len)))
                bar.log(f"step {done:5d}  exact match on {args.eval_size} held-out strings: "
                        f"{accuracy[-1][1]:.1%}")
    sync(device)

    model.eval()
    src, src_len, _, tgt_out = held_out
    pred, _, _ = model.greedy(src[:1], src_len[:1], args.max_len + 1)
    print(f"\nexample: {text(src[0, :int(src_len[0])].tolist())} -> "
          f"{text(strip(pred[0].cpu()))}   (target {text(strip(tgt_out[0].cpu()))})")
    print("attention (denser character = more weight; rows: output tokens, columns: input digits)")
    print(attention_map(model, src[:1], src_len[:1], args.max_len))
    print(f"done in {bar.elapsed():.0f} s: final loss {losses[-1]:.4f}, exact match {accuracy[-1][1]:.1%}")
    return {"losses": losses, "accuracy": accuracy, "elapsed": bar.elapsed()}


if __name__ == "__main__":
    main()
