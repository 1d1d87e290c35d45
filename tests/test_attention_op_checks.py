"""The attention custom ops called directly (torch.ops.seqops.attention_fwd / attention_bwd) refuse inconsistent
arguments with a clear error, before any kernel indexes them: on the CPU route a short dout once segfaulted in
ATen's flash backward, more key heads than query heads raised SIGFPE, and mismatched batches or a short lse
read out of bounds into NaN."""

import pytest
import torch

from seqops.ops.errors import InvalidArgumentError, InvalidDtypeError

B, H, HKV, L, S, E, EV = 2, 4, 2, 9, 11, 16, 8
fwd, bwd = torch.ops.seqops.attention_fwd, torch.ops.seqops.attention_bwd


def _good():
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, HKV, S, E), torch.randn(B, HKV, S, EV)
    return {"q": q, "k": k, "v": v, "mask": None, "seed": None, "scale": 0.25, "is_causal": False, "dropout_p": 0.0}


def _call_fwd(args):
    return fwd(args["q"], args["k"], args["v"], args["mask"], args["seed"], args["scale"], args["is_causal"],
               args["dropout_p"])


FORWARD_CASES = {
    "3-D q": ({"q": torch.randn(H, L, E)}, InvalidArgumentError, "4-D"),
    "batch mismatch": ({"k": torch.randn(1, HKV, S, E), "v": torch.randn(1, HKV, S, EV)}, InvalidArgumentError,
                       "batch"),
    "more key heads than query heads": ({"k": torch.randn(B, 8, S, E), "v": torch.randn(B, 8, S, EV)},
                                        InvalidArgumentError, "head count"),
    "heads not dividing": ({"k": torch.randn(B, 3, S, E), "v": torch.randn(B, 3, S, EV)}, InvalidArgumentError,
                           "head count"),
    "key and value heads differ": ({"v": torch.randn(B, 1, S, EV)}, InvalidArgumentError, "head count"),
    "value shorter than key": ({"v": torch.randn(B, HKV, S - 3, EV)}, InvalidArgumentError, "lengths"),
    "head dims differ": ({"k": torch.randn(B, HKV, S, E + 1)}, InvalidArgumentError, "head dims"),
    "mask shape": ({"mask": torch.ones(B, H, L, S + 1, dtype=torch.bool)}, InvalidArgumentError, "mask"),
    "integer mask": ({"mask": torch.ones(B, H, L, S, dtype=torch.int32)}, InvalidDtypeError, "mask"),
    "integer inputs": ({"q": torch.ones(B, H, L, E, dtype=torch.int32),
                        "k": torch.ones(B, HKV, S, E, dtype=torch.int32),
                        "v": torch.ones(B, HKV, S, EV, dtype=torch.int32)}, InvalidDtypeError, "floating"),
    "mixed dtypes": ({"k": torch.randn(B, HKV, S, E, dtype=torch.float64)}, InvalidDtypeError, "dtype"),
    "dropout above 1": ({"dropout_p": 1.5}, InvalidArgumentError, "dropout_p"),
    "dropout without seed": ({"dropout_p": 0.3}, InvalidArgumentError, "seed"),
    "float seed": ({"dropout_p": 0.3, "seed": torch.ones(1)}, InvalidArgumentError, "seed"),
    "meta value among cpu tensors": ({"v": torch.randn(B, HKV, S, EV, device="meta")}, InvalidArgumentError,
                                     "meta"),
}


def _good_backward():
    args = _good()
    out, lse = _call_fwd(args)
    return {"dout": torch.randn_like(out), "dlse": None, **args, "out": out, "lse": lse}


def _call_bwd(a):
    return bwd(a["dout"], a["dlse"], a["q"], a["k"], a["v"], a["mask"], a["seed"], a["out"], a["lse"], a["scale"],
               a["is_causal"], a["dropout_p"], False)


BACKWARD_CASES = {
    "short dout": ({"dout": torch.randn(B, H, 1, EV)}, InvalidArgumentError, "dout"),
    "dout of another dtype": ({"dout": torch.randn(B, H, L, EV, dtype=torch.float64)}, InvalidDtypeError, "dout"),
    "short out": ({"out": torch.randn(B, H, L - 1, EV)}, InvalidArgumentError, "out"),
    "short lse": ({"lse": torch.randn(B, H, 4)}, InvalidArgumentError, "lse"),
    "dlse shape": ({"dlse": torch.randn(B, H, L, 1)}, InvalidArgumentError, "dlse"),
    "integer lse": ({"lse": torch.ones(B, H, L, dtype=torch.int64)}, InvalidDtypeError, "lse"),
    "batch mismatch": ({"k": torch.randn(1, HKV, S, E), "v": torch.randn(1, HKV, S, EV)}, InvalidArgumentError,
                       "batch"),
    "meta lse": ({"lse": torch.randn(B, H, L, device="meta")}, InvalidArgumentError, "meta"),
}


# op -> (consistent arguments, the call, the changes each case makes to them)
OPS = {"forward": (_good, _call_fwd, FORWARD_CASES), "backward": (_good_backward, _call_bwd, BACKWARD_CASES)}


@pytest.mark.parametrize("op,case", [(op, case) for op, (_, _, cases) in OPS.items() for case in cases])
def test_op_refuses(op, case):
    good, call, cases = OPS[op]
    change, error, match = cases[case]
    with pytest.raises(error, match=match):
        call({**good(), **change})


def test_consistent_arguments_still_run_and_errors_are_runtime_errors():
    # Code written against SDPA catches RuntimeError.
    a = _good_backward()
    dq, dk, dv, _ = _call_bwd(a)
    assert dq.shape == a["q"].shape and dk.shape == a["k"].shape and dv.shape == a["v"].shape
    with pytest.raises(RuntimeError):
        _call_fwd({**_good(), "dropout_p": -0.1})


def test_fake_kernels_check_too():
    # Shape inference under FakeTensorMode (torch.compile, torch.export) refuses the same arguments.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        with pytest.raises(InvalidArgumentError, match="head count"):
            _call_fwd({**_good(), "k": torch.randn(B, 8, S, E), "v": torch.randn(B, 8, S, EV)})
        out, lse = _call_fwd(_good())
        assert out.shape == (B, H, L, EV) and lse.shape == (B, H, L)
