"""Benchmark cases: one op, one shape, one mode, one dtype. Their names are the rows of headline.json."""

from dataclasses import dataclass, replace

import torch

MODES = ("fwd", "bwd", "fwdbwd", "infer")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SUITES = ("cell", "rnn", "attn", "varlen")
ATTENTION_SUITES = ("attn", "varlen")  # rated in TFLOP/s
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}  # gate blocks stacked in weight_ih / weight_hh
OPS = {
    "cell": ("lstm_cell", "gru_cell", "rnn_tanh_cell"),
    "rnn": ("lstm", "gru", "rnn_tanh"),
    "attn": ("attn",),
    "varlen": ("attn_varlen",),  # a batch of B sequences of different lengths (varlen_lengths)
}
# backward cost: 2.5x forward for attention (FlashAttention's convention); for GEMMs dX and dW cost 2x
BWD_FACTOR = {"attn": 2.5, "varlen": 2.5, "cell": 2.0, "rnn": 2.0}


def varlen_lengths(B, L):
    """The lengths of a varlen case's B sequences: spread evenly from L/4 to L (mean 5L/8), the longest last, as
    in a batch of documents or requests of unlike length."""
    if B == 1:
        return [L]
    return [max(1, round(L * (1 + 3 * i / (B - 1)) / 4)) for i in range(B)]


@dataclass(frozen=True)
class Case:
    suite: str  # "cell" | "rnn" | "attn"
    op: str  # one of OPS[suite]
    mode: str  # "fwd" | "bwd" | "fwdbwd" | "infer" (forward under no_grad, as in serving)
    dtype: str  # key of DTYPES
    B: int  # batch
    T: int = 1  # rnn: time steps
    I: int = 0  # cell/rnn: input size
    H: int = 0  # cell/rnn: hidden size
    heads: int = 0  # attn, varlen
    L: int = 0  # attn: query length; varlen: the longest sequence
    S: int = 0  # attn: key/value length; varlen: = L (self-attention)
    D: int = 0  # attn, varlen: head dim
    causal: bool = False
    sweep: str = ""  # plot axes this case is a point of, "+"-joined: "batch", "hidden", "seqlen" ("" = none)

    def __post_init__(self):
        if self.suite not in OPS or self.op not in OPS[self.suite]:
            raise ValueError(f"unknown op {self.op!r} for suite {self.suite!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    @property
    def gate_op(self):
        return self.op.removesuffix("_cell")

    @property
    def name(self):
        if self.suite == "attn":
            causal = ".causal" if self.causal else ""
            kv = f".S{self.S}" if self.S != self.L else ""
            return f"attn.{self.mode}{causal}.B{self.B}.H{self.heads}.L{self.L}{kv}.D{self.D}.{self.dtype}"
        if self.suite == "varlen":
            causal = ".causal" if self.causal else ""
            return f"varlen.{self.mode}{causal}.B{self.B}.H{self.heads}.L{self.L}.D{self.D}.{self.dtype}"
        steps = f".T{self.T}" if self.suite == "rnn" else ""
        inp = f".I{self.I}" if self.I != self.H else ""
        return f"{self.op}.{self.mode}.B{self.B}{steps}{inp}.H{self.H}.{self.dtype}"

    @property
    def steps(self):
        return self.T if self.suite == "rnn" else 1

    @property
    def flops(self):
        """Forward: 4*B*H*L*S*D for attention (halved when causal), over each sequence's own L*L for varlen (no
        padding: the work a padded batch would waste is not counted); the GEMMs 2*T*B*G*H*(I+H) for RNNs and cells
        (G gates; pointwise work left out). Backward and fwd+bwd scale by BWD_FACTOR."""
        if self.suite == "attn":
            fwd = 4 * self.B * self.heads * self.L * self.S * self.D / (2 if self.causal else 1)
        elif self.suite == "varlen":
            pairs = sum(n * n for n in varlen_lengths(self.B, self.L))
            fwd = 4 * self.heads * pairs * self.D / (2 if self.causal else 1)
        else:
            fwd = 2 * self.steps * self.B * GATES[self.gate_op] * self.H * (self.I + self.H)
        factor = {"fwd": 1.0, "infer": 1.0, "bwd": BWD_FACTOR[self.suite], "fwdbwd": 1.0 + BWD_FACTOR[self.suite]}
        return fwd * factor[self.mode]

    @property
    def working_bytes(self):
        """Bytes one call touches, roughly: decides input rotation on the CPU."""
        size = torch.empty((), dtype=self.torch_dtype).element_size()
        if self.suite == "attn":
            return size * self.B * self.heads * (2 * self.L * self.D + 2 * self.S * self.D)
        if self.suite == "varlen":
            return size * sum(varlen_lengths(self.B, self.L)) * self.heads * 4 * self.D
        gates = GATES[self.gate_op] * self.H
        weights = gates * (self.I + self.H)
        acts = self.steps * self.B * (self.I + self.H + gates)
        return size * (weights + acts)


def rnn_cases(ops, B, T, H, modes, dtypes, sweep=""):
    return [
        Case("rnn", op, m, d, B=B, T=T, I=H, H=H, sweep=sweep) for op in ops for m in modes for d in dtypes
    ]


def cell_cases(ops, B, H, modes, dtypes):
    return [Case("cell", op, m, d, B=B, I=H, H=H) for op in ops for m in modes for d in dtypes]


def attn_cases(B, heads, L, D, modes, dtypes, causals=(False, True), sweep="", suite="attn"):
    return [
        Case(suite, OPS[suite][0], m, d, B=B, heads=heads, L=L, S=L, D=D, causal=c, sweep=sweep)
        for m in modes
        for c in causals
        for d in dtypes
    ]


def varlen_cases(B, heads, L, D, modes, dtypes, causals=(False, True)):
    return attn_cases(B, heads, L, D, modes, dtypes, causals, suite="varlen")


HEADLINE = (
    "lstm.fwd.B16.T1024.H768.fp16",
    "lstm.fwdbwd.B16.T1024.H768.fp16",
    "gru.fwd.B16.T1024.H768.fp16",
    "gru.fwdbwd.B16.T1024.H768.fp16",
    "attn.fwd.B4.H16.L8192.D128.bf16",
    "attn.bwd.B4.H16.L8192.D128.bf16",
    "attn.fwd.causal.B4.H16.L8192.D128.bf16",
    "attn.bwd.causal.B4.H16.L8192.D128.bf16",
)


def headline_cases():
    cases = rnn_cases(("lstm", "gru"), 16, 1024, 768, ("fwd", "fwdbwd"), ("fp16",))
    cases += attn_cases(4, 16, 8192, 128, ("fwd", "bwd"), ("bf16",))
    assert {c.name for c in cases} == set(HEADLINE)
    return cases


def gpu_cases():
    """Headline shapes (every op and mode in fp16; fp32 and bf16 too for LSTM/GRU training), then the sweeps
    behind the plots, then packed sequences: 78 cases after dedupe. Run it in parts (--suites) where one command
    has a time limit."""
    cases = cell_cases(OPS["cell"], 256, 768, ("fwd", "fwdbwd"), ("fp32", "fp16"))
    cases += rnn_cases(OPS["rnn"], 16, 1024, 768, MODES, ("fp16",))
    cases += rnn_cases(("lstm", "gru"), 16, 1024, 768, ("fwdbwd",), ("fp32", "bf16"))
    for B in (1, 4, 16, 64, 256):
        cases += rnn_cases(("lstm", "gru"), B, 256, 768, ("fwd",), ("fp16",), sweep="batch")
    for H in (256, 512, 768, 1024, 2048):
        cases += rnn_cases(("lstm", "gru"), 16, 256, H, ("fwd",), ("fp16",), sweep="hidden")
    cases += attn_cases(4, 16, 8192, 128, MODES, ("bf16",))
    cases += attn_cases(4, 16, 8192, 128, ("fwd", "bwd"), ("fp16",))
    for L in (1024, 2048, 4096, 8192, 16384):
        # tokens per batch held at 32k, FlashAttention's sweep convention
        cases += attn_cases(32768 // L, 16, L, 128, ("fwd", "bwd"), ("bf16",), sweep="seqlen")
    # 16 sequences of 1k-4k tokens: packed against padded to the longest
    cases += varlen_cases(16, 16, 4096, 128, ("fwd", "bwd"), ("bf16",))
    return cases


def cpu_cases():
    """Sizes a 2-core CPU runs in a few minutes. The first rows are the LSTM cell vs torch.nn.LSTMCell."""
    cases = cell_cases(("lstm_cell",), 64, 512, ("fwd", "fwdbwd"), ("fp32",))
    cases += cell_cases(OPS["cell"], 64, 256, ("fwd", "fwdbwd"), ("fp32",))
    cases += rnn_cases(OPS["rnn"], 16, 64, 256, ("fwd", "fwdbwd"), ("fp32",))
    # The RNN issue's CPU target: inference and training at B=32, T=100, I=H=256.
    cases += rnn_cases(("lstm", "gru"), 32, 100, 256, ("infer", "fwdbwd"), ("fp32",))
    for B in (1, 4, 16, 64):
        cases += rnn_cases(("lstm",), B, 64, 256, ("fwd",), ("fp32",), sweep="batch")
    for H in (64, 128, 256, 512):
        cases += rnn_cases(("lstm",), 16, 64, H, ("fwd",), ("fp32",), sweep="hidden")
    # Hidden sizes off the SIMD panels' width (64 floats with AVX-512): their weights fill a padded last panel.
    for H in (20, 100):
        cases += rnn_cases(("lstm", "gru"), 4, 100, H, ("fwdbwd",), ("fp32",))
    # One step a call, as in token-by-token decoding, and small cells: where a call's fixed cost (the Python and
    # dispatch around the op) shows most.
    cases += rnn_cases(OPS["rnn"], 1, 1, 256, ("infer", "fwdbwd"), ("fp32",))
    cases += cell_cases(OPS["cell"], 4, 32, ("fwd", "fwdbwd"), ("fp32",))
    # From L = 32, where a fixed per-call cost (Python around the kernel) shows most.
    for L in (32, 64, 128, 256, 512, 1024):
        cases += attn_cases(2, 4, L, 64, ("fwd", "bwd"), ("fp32",), sweep="seqlen")
    cases += varlen_cases(8, 4, 512, 64, ("fwd", "bwd"), ("fp32",))
    return cases


def quick_cases(device_type):
    if device_type == "cuda":
        return headline_cases()
    cases = cell_cases(("lstm_cell",), 8, 32, ("fwd", "fwdbwd"), ("fp32",))
    cases += rnn_cases(("lstm", "gru"), 4, 8, 32, ("fwd", "fwdbwd"), ("fp32",))
    cases += attn_cases(1, 2, 128, 32, ("fwd", "bwd"), ("fp32",), causals=(False,))
    cases += varlen_cases(4, 2, 128, 32, ("fwd",), ("fp32",), causals=(False,))
    return cases


def default_cases(device_type, quick=False):
    if quick:
        return quick_cases(device_type)
    return gpu_cases() if device_type == "cuda" else cpu_cases()


def sweep_tags(sweep):
    return set(sweep.split("+")) - {""}


def is_base(sweep):
    """A case of the main list (not only a point of a sweep): these get speed-up bars."""
    return not sweep or "base" in sweep_tags(sweep)


def dedupe(cases):
    """One case per name, in first-seen order. A sweep point can coincide with a base shape or another
    sweep's point: its tags are joined ('base+batch+hidden') so every plot still finds it."""
    merged = {}
    for case in cases:
        prev = merged.get(case.name)
        if prev is None:
            merged[case.name] = case
            continue
        tags = sweep_tags(prev.sweep) | sweep_tags(case.sweep)
        if not prev.sweep or not case.sweep:
            tags.add("base")
        merged[case.name] = replace(prev, sweep="+".join(sorted(tags)))
    return list(merged.values())


def select(cases, suites=None, ops=None, modes=None, dtypes=None, contains=None):
    """Filter by suite, op, mode, dtype and substrings of the name (any of them)."""
    out = [
        c
        for c in cases
        if (not suites or c.suite in suites)
        and (not ops or c.op in ops or c.gate_op in ops)
        and (not modes or c.mode in modes)
        and (not dtypes or c.dtype in dtypes)
        and (not contains or any(s in c.name for s in contains))
    ]
    return dedupe(out)


def override_sizes(cases, **sizes):
    """Replace shape fields by each value given: {'B': [1, 16]} turns each case into one case per B.
    Only fields a suite uses are replaced; I follows H for cells and RNNs; S follows L for attention."""
    out = list(cases)
    for field, values in sizes.items():
        if not values:
            continue
        expanded = []
        for case in out:
            uses = {"T": ("rnn",), "L": ATTENTION_SUITES, "D": ATTENTION_SUITES, "heads": ATTENTION_SUITES,
                    "H": ("cell", "rnn")}
            if case.suite not in uses.get(field, SUITES):
                expanded.append(case)
                continue
            for v in values:
                extra = {"I": v} if field == "H" else {"S": v} if field == "L" else {}
                expanded.append(replace(case, **{field: v}, **extra, sweep=""))
        out = expanded
    return dedupe(out)
