"""seqops RNN modules under DistributedDataParallel: two CPU processes on gloo, each with half of the batch,
end with the same gradients as one process with the whole batch. Every wait has a timeout."""

import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import seqops

pytestmark = pytest.mark.distributed

WORLD = 2
T, B, I, H = 4, 6, 3, 5  # B splits evenly over the two ranks
TIMEOUT_S = 120


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = seqops.LSTM(I, H, 2, batch_first=True, bidirectional=True, proj_size=2)
        self.gru = seqops.GRU(4, H, batch_first=True)
        self.cell = seqops.RNNCell(H, H)
        self.head = nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        h = self.cell(y[:, -1], h[0])
        return self.head(h).squeeze(-1)


def _model_and_data():
    torch.manual_seed(0)
    model = Model().double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    target = torch.randn(B, dtype=torch.float64)
    return model, x, target


def _loss(model, x, target):
    return nn.functional.mse_loss(model(x), target)  # a mean over the batch, as DDP's gradient average is


def _worker(rank, out_dir):
    try:
        _train_shard(rank, out_dir)
    except BaseException:
        # The parent reads this: a spawned worker's stderr is easy to lose under pytest.
        with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _train_shard(rank, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        # A file rendezvous: a free TCP port picked here could be taken by another process before rank 0 binds it.
        init_method="file://" + os.path.join(out_dir, "rendezvous"),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S / 2),
    )
    try:
        model, x, target = _model_and_data()
        ddp = DistributedDataParallel(model)
        shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        _loss(ddp, x[shard], target[shard]).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save(grads, os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(rank, str(tmp_path))) for rank in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        errors = "".join(f.read_text() for f in sorted(tmp_path.glob("error*.txt")))
        assert not any(p.is_alive() for p in procs), "DDP workers timed out\n" + errors
        assert [p.exitcode for p in procs] == [0] * WORLD, "a DDP worker failed:\n" + errors
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)

    model, x, target = _model_and_data()
    _loss(model, x, target).backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        assert grads.keys() == dict(model.named_parameters()).keys()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, msg=f"rank {rank}, {name}")
