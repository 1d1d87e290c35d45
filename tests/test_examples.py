"""The examples, run in-process for a few steps at tiny sizes: each one learns (its loss falls), the char-RNN
resumes exactly where its checkpoint left off, and its torch.nn and seqops runs start from the same loss."""

import importlib
import math
import os
import sys

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(autouse=True)
def cpu_attention_path(monkeypatch):
    """Run seqops.attention on CPU tensors as a user's CPU run does: the reference path, not the Triton
    interpreter that conftest turns on for the kernel tests (tests/test_attention.py covers the kernels; here
    the interpreter would take minutes per example). If this private switch is renamed, setattr fails
    loudly."""
    monkeypatch.setattr("seqops.ops.attention._INTERPRET", False)


@pytest.fixture(autouse=True)
def restore_threads():
    # The examples run with --threads 1 here (see ONE_THREAD); set_num_threads is process-wide: put it back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# At these tiny sizes a second thread only adds fork/join waits, and on a shared, loaded CPU each parallel
# region can stall for as long as the other thread is descheduled (seconds per step, measured): one thread
# is faster.
ONE_THREAD = ["--threads", "1"]


def load(name):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return importlib.import_module(name)


def mean(xs):
    return sum(xs) / len(xs)


def assert_learns(losses, head=3, tail=5):
    """The loss must fall well below where it started (a tenth at least): learning, not noise."""
    assert all(math.isfinite(x) for x in losses), losses
    start, end = mean(losses[:head]), mean(losses[-tail:])
    assert end < 0.9 * start, f"loss did not fall: first {head} steps {start:.4f}, last {tail} {end:.4f}"


# Small enough for a CI core, large enough that a few steps at a high learning rate visibly learn.
CHAR_RNN_TINY = ["--embed", "16", "--hidden", "32", "--layers", "2", "--batch-size", "8", "--seq-len", "16",
                 "--corpus-chars", "20000", "--sample-every", "0", "--no-progress", "--log-every", "1000",
                 *ONE_THREAD]


# ---- shared helpers ----------------------------------------------------------------------------------------


def test_corpus_is_reproducible_and_vocab_round_trips():
    common = load("common")
    text = common.stdlib_corpus(5000)
    assert len(text) == 5000 and text == common.stdlib_corpus(5000)
    vocab = common.CharVocab.from_text(text)
    assert vocab.decode(vocab.encode(text).tolist()) == text


def test_split_streams_keeps_each_row_contiguous():
    common = load("common")
    ids = torch.arange(23)
    streams = common.split_streams(ids, 4)  # 23 // 4 = 5 per stream, the last 3 dropped
    assert streams.shape == (4, 5)
    torch.testing.assert_close(streams[1], torch.arange(5, 10))


def test_sequence_api_rejects_unknown_impl():
    with pytest.raises(ValueError, match="unknown --impl"):
        load("common").sequence_api("jax")


# ---- char_rnn ----------------------------------------------------------------------------------------------


def test_char_rnn_loss_falls():
    result = load("char_rnn").main(CHAR_RNN_TINY + ["--steps", "30", "--lr", "1e-2"])
    assert len(result["losses"]) == 30
    assert_learns(result["losses"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # the carried state is a (h, c) pair or a single h
def test_char_rnn_resume_continues_from_saved_step(tmp_path, cell):
    char_rnn = load("char_rnn")
    # Exact continuation needs the weights, the optimizer, the RNN state carried into the next chunk and
    # (with dropout on) the random stream all restored: 6 + 6 resumed steps give the losses of 12 straight
    # ones.
    args = CHAR_RNN_TINY + ["--cell", cell, "--dropout", "0.2", "--lr", "1e-2", "--save-every", "6"]
    straight = char_rnn.main(args + ["--steps", "12", "--checkpoint", str(tmp_path / "straight.pt")])
    ckpt = str(tmp_path / "split.pt")
    first = char_rnn.main(args + ["--steps", "6", "--checkpoint", ckpt])
    # Conflicting shape flags on resume are overridden by the checkpoint's (else the state would not fit).
    resumed = char_rnn.main(args + ["--steps", "12", "--checkpoint", ckpt, "--resume", "--hidden", "48",
                                    "--batch-size", "4"])
    assert first["start_step"] == 0 and resumed["start_step"] == 6
    assert len(resumed["losses"]) == 6
    split = torch.tensor(first["losses"] + resumed["losses"])
    torch.testing.assert_close(split, torch.tensor(straight["losses"]))
    assert torch.load(ckpt, weights_only=True)["step"] == 12


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_rnn_torch_and_seqops_start_from_the_same_loss(cell):
    # Same seed, same init (seqops' modules are drop-ins), same data: the first loss is the same number.
    result = load("char_rnn").main(CHAR_RNN_TINY + ["--impl", "both", "--cell", cell, "--steps", "4"])
    torch.testing.assert_close(result["seqops"]["losses"][0], result["torch"]["losses"][0])
    assert result["speedup"] > 0


# ---- seq2seq_attention -------------------------------------------------------------------------------------


def test_seq2seq_attention_learns_to_reverse():
    result = load("seq2seq_attention").main([
        "--embed", "16", "--hidden", "32", "--batch-size", "32", "--min-len", "2", "--max-len", "5",
        "--steps", "100", "--lr", "1e-2", "--eval-size", "100", "--eval-every", "25", "--no-progress",
        "--log-every", "1000", *ONE_THREAD,
    ])
    assert_learns(result["losses"])
    # Greedy exact match on held-out strings: chance is about 1 in 10**length; this run reaches ~90%
    # (measured).
    # Half is far from both, so the check fails only if the model stops learning the task.
    steps, accuracy = zip(*result["accuracy"])
    assert steps == (25, 50, 75, 100)
    assert accuracy[-1] >= 0.5 and accuracy[-1] > accuracy[0], accuracy


def test_seq2seq_make_batch_targets():
    s2s = load("seq2seq_attention")
    src, lengths, tgt_in, tgt_out = s2s.make_batch("reverse", 4, 2, 6, torch.Generator().manual_seed(1))
    for b, n in enumerate(lengths.tolist()):
        digits = src[b, :n]
        assert (src[b, n:] == s2s.PAD).all()
        torch.testing.assert_close(tgt_out[b, :n], digits.flip(0))
        assert tgt_out[b, n] == s2s.EOS and tgt_in[b, 0] == s2s.BOS
        torch.testing.assert_close(tgt_in[b, 1:n + 1], tgt_out[b, :n])


# ---- transformer_lm ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["functional", "module"])
def test_transformer_lm_loss_falls(attention):
    result = load("transformer_lm").main([
        "--attention", attention, "--dim", "32", "--heads", "2", "--layers", "2", "--seq-len", "32",
        "--batch-size", "8", "--steps", "30", "--lr", "1e-2", "--warmup", "3", "--corpus-chars", "20000",
        "--sample-every", "0", "--no-progress", "--log-every", "1000", *ONE_THREAD,
    ])
    assert_learns(result["losses"])
