"""A small causal Transformer language model on seqops' attention, trained on the char-RNN's corpus.

Pre-norm decoder blocks (GPT-style) whose self-attention runs in seqops' flash-attention kernels, either
- ``--attention functional`` (default): a fused QKV projection, then
  ``seqops.attention(q, k, v, is_causal=True)``;
- ``--attention module``: ``seqops.MultiheadAttention(batch_first=True)`` with ``need_weights=False``.
Trained on random windows of the standard library's source, then sampled one character at a time.
``--impl torch`` runs the same model on ``F.scaled_dot_product_attention`` / ``nn.MultiheadAttention``.

    python examples/transformer_lm.py                         # CPU, a few minutes
    python examples/transformer_lm.py --device cuda --dim 512 --heads 8 --layers 8 --seq-len 512 \
        --batch-size 64 --steps 5000
"""

import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    CharVocab,
    Progress,
    base_parser,
    clip_and_step,
    sample_next,
    sequence_api,
    setup,
    stdlib_corpus,
    sync,
)


class CausalSelfAttention(nn.Module):
    def __init__(self, api, dim, heads, dropout, use_module):
        super().__init__()
        self.heads, self.dropout, self.use_module = heads, dropout, use_module
        if use_module:
            self.mha = api.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        else:
            self.attention = api.attention
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # x: [B, L, D] -> [B, L, D]
        B, L, D = x.shape
        if self.use_module:
            # MultiheadAttention wants the mask (True = hidden) with the is_causal hint, as torch.nn's does.
            future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)
            return self.mha(x, x, x, attn_mask=future, is_causal=True, need_weights=False)[0]
        # heads as strided views: q, k, v [B, heads, L, D / heads]
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = self.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, api, dim, heads, dropout, use_module):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(api, dim, heads, dropout, use_module)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    def __init__(self, api, vocab_size, dim, heads, layers, context, dropout, use_module):
        super().__init__()
        if dim % heads:
            raise ValueError(f"--dim {dim} must be a multiple of --heads {heads}")
        self.context = context
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(api, dim, heads, dropout, use_module) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, ids):
        # ids: [B, L] (L <= context) -> logits [B, L, V]
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@torch.no_grad()
def sample(model, vocab, prompt, length, temperature, generator):
    """Extend ``prompt`` by ``length`` characters, each step re-reading the last ``context`` characters."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = vocab.encode(prompt).to(device)[None]
    for _ in range(length):
        logits = model(ids[:, -model.context:])
        ids = torch.cat([ids, sample_next(logits[:, -1], temperature, generator)[:, None]], dim=1)
    model.train(was_training)
    return vocab.decode(ids[0].tolist())


def random_windows(data, batch_size, length, generator):
    """``batch_size`` random windows of ``length + 1`` characters: inputs [B, L], next characters [B, L]."""
    starts = torch.randint(0, data.numel() - length - 1, (batch_size,), generator=generator)
    windows = torch.stack([data[s:s + length + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def parse_args(argv):
    p = base_parser(__doc__.split("\n")[0], steps=400, batch_size=16, lr=2e-3)
    p.add_argument("--attention", choices=["functional", "module"], default="functional",
                   help="seqops.attention on a fused QKV projection, or seqops.MultiheadAttention")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128, help="context length")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=50, help="steps of linear learning-rate warm-up")
    p.add_argument("--corpus-chars", type=int, default=400_000)
    p.add_argument("--sample-every", type=int, default=200, help="print a sample every N steps (0: never)")
    p.add_argument("--sample-len", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--prompt", default="def ")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = setup(args)
    text = stdlib_corpus(args.corpus_chars)
    vocab = CharVocab.from_text(text)
    data = vocab.encode(text)
    if data.numel() <= args.seq_len + 1:
        raise SystemExit(f"--corpus-chars {args.corpus_chars} is shorter than one window of "
                         f"--seq-len {args.seq_len}")
    model = TransformerLM(sequence_api(args.impl), len(vocab), args.dim, args.heads, args.layers,
                          args.seq_len, args.dropout, args.attention == "module").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # Warm up, then cosine decay to a tenth: the usual schedule, and it keeps a short run stable.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))))
    batches, sampler = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{args.impl}] Transformer {args.layers} x (dim {args.dim}, {args.heads} heads, {args.attention} "
          f"attention), context {args.seq_len}, {n_params / 1e6:.2f}M params, "
          f"vocab {len(vocab)}, corpus {len(text):,} chars, device {device}", flush=True)

    losses, sample_text = [], None
    model.train()
    with Progress(args.steps, enabled=not args.no_progress, description=args.impl) as bar:
        for step in range(args.steps):
            x, y = (t.to(device) for t in random_windows(data, args.batch_size, args.seq_len, batches))
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            clip_and_step(model, optimizer, args.clip)
            schedule.step()
            losses.append(loss.item())

            done = step + 1
            bar.advance(f"loss {losses[-1]:.3f}")
            if done % args.log_every == 0 or done == args.steps:
                window = losses[-args.log_every:]
                mean = sum(window) / len(window)
                bar.log(f"[{args.impl}] step {done:5d}  loss {mean:.4f} ({mean / math.log(2):.3f} bits/char)"
                        f"  ({bar.elapsed():.0f} s)")
            if args.sample_every and (done % args.sample_every == 0 or done == args.steps):
                sample_text = sample(model, vocab, args.prompt, args.sample_len, args.temperature, sampler)
                bar.log(f"----- sample at step {done} -----\n{sample_text}\n" + "-" * 32)
    sync(device)
    print(f"done in {bar.elapsed():.0f} s: final loss {losses[-1]:.4f}")
    return {"losses": losses, "sample": sample_text, "elapsed": bar.elapsed()}


if __name__ == "__main__":
    main()
