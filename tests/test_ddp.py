"""GradMimic under torch DDP (2 gloo processes on the CPU) equals one process over the same global batches:
the trained weights, the merged per-rank recordings and the Stage 2 keep list."""

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from keepset.models import MLP
from keepset.recorder import DynamicsRecorder
from keepset.recorder.log import MergedLogs
from keepset.selection.stage2 import stage2_filter
from keepset.training import GradMimic

N, B, STEPS, EPOCHS = 48, 8, 3, 2  # global batch 2 x B


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)
    return x, y, np.arange(N) * 3 + 7


def _models():
    torch.manual_seed(0)
    return MLP(6, 3, hidden=(5,)), MLP(6, 3, hidden=(5,))


def _global_batches():
    """Per epoch, a seeded order cut into global batches of 2B; rank r takes the r-th half of each."""
    for epoch in range(EPOCHS):
        order = np.random.default_rng(epoch).permutation(N)
        for s in range(0, N, 2 * B):
            yield epoch, order[s:s + 2 * B]


def _worker(rank, port, folder, layers, fused):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, y, ids = _data()
        model, reference = _models()
        ddp = DDP(model)
        gm = GradMimic(reference, layers=layers, temperature=0.5, fused=fused, record_to=folder)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.3, momentum=0.9)
        for epoch, batch in _global_batches():
            mine = batch[rank * B:(rank + 1) * B]
            loss = gm.loss(ddp, x[mine], y[mine], ids[mine], epoch=epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        gm.close()
        if rank == 0:
            torch.save(model.state_dict(), os.path.join(folder, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("layers,fused", [(None, True), ("all", True), ("all", False)])
def test_ddp_two_processes_equal_one_process_over_the_global_batches(tmp_path, layers, fused):
    folder = str(tmp_path / "ddp")
    mp.start_processes(_worker, args=(_free_port(), folder, layers, fused), nprocs=2, join=True,
                       start_method="spawn")
    assert sorted(os.listdir(folder)) == ["ddp.pt", "rank-00000", "rank-00001"]
    # one process over the same global batches
    x, y, ids = _data()
    model, reference = _models()
    gm = GradMimic(copy.deepcopy(reference), layers=layers, temperature=0.5, fused=fused, record_to=tmp_path / "one")
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    for epoch, batch in _global_batches():
        loss = gm.loss(model, x[batch], y[batch], ids[batch], epoch=epoch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gm.close()
    ddp_state = torch.load(os.path.join(folder, "ddp.pt"), weights_only=True)
    for n, p in model.state_dict().items():
        torch.testing.assert_close(ddp_state[n], p, rtol=1e-5, atol=1e-6, msg=n)
    merged = DynamicsRecorder.open(folder)
    assert isinstance(merged, MergedLogs)
    a, b = merged.read(), DynamicsRecorder.open(tmp_path / "one").read()
    assert np.array_equal(a["step"], b["step"])
    assert np.array_equal(a["id"], b["id"])  # within a step: rank 0's half, then rank 1's: the global order
    for f in ("mimic", "mimic_normed", "weight"):
        np.testing.assert_allclose(a[f], b[f], rtol=1e-4, atol=1e-6, err_msg=f)
    assert np.allclose(np.bincount(a["step"], a["mimic_normed"]), 1.0, atol=1e-5)  # softmax over the global batch
    keep_ddp = stage2_filter(folder, ids=ids)
    keep_one = stage2_filter(tmp_path / "one", ids=ids)
    assert np.array_equal(keep_ddp, keep_one)


def test_merged_logs_equal_a_stable_sort_by_step(tmp_path):
    """Random per-rank logs with chunk sizes that cut steps anywhere: the merge is the records sorted by step."""
    rng = np.random.default_rng(1)
    logs, rows = [], []
    for r in range(3):
        rec = DynamicsRecorder(tmp_path / f"rank-{r:05d}", ("a",), chunk_rows=int(rng.integers(1, 9)))
        step = 0
        for _ in range(int(rng.integers(5, 30))):
            step += int(rng.integers(0, 3))
            n = int(rng.integers(1, 6))
            ids = rng.integers(0, 1000, n)
            v = rng.normal(size=n)
            rec.record(ids, step, 0, a=v)
            rows += [(step, r, k, i, x) for k, (i, x) in enumerate(zip(ids, v))]
        rec.flush()
        logs.append(rec)
    merged = DynamicsRecorder.open(tmp_path)
    got = {c: np.concatenate([ch[c] for ch in merged.iter_chunks(rows=4)]) for c in ("id", "step", "a")}
    rows.sort(key=lambda t: (t[0], t[1]))  # by step, then rank (each rank's records keep their order)
    assert got["step"].tolist() == [t[0] for t in rows]
    assert got["id"].tolist() == [t[3] for t in rows]
    np.testing.assert_allclose(got["a"], [t[4] for t in rows], rtol=1e-6)
    assert merged.n_records == len(rows)
