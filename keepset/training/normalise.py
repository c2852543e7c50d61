"""Batch weights normalised over the batch, or, under DDP, over the global batch of every rank."""

from __future__ import annotations

import torch


class BatchNormaliser:
    """Normalises a batch's weights to sum to 1 over the batch; under DDP over the global batch of all ranks
    (scalar all-reduces on a process group of its own, so DDP's gradient buckets are never mixed in).

    ddp : the ``DistributedDataParallel`` wrapper of the model, or None for one process.
    """

    def __init__(self, ddp=None):
        self.group, self.world, self.comm_device = None, 1, None
        if ddp is not None:
            import torch.distributed as dist

            ranks = dist.get_process_group_ranks(ddp.process_group)
            self.group = dist.new_group(ranks=ranks)
            self.world = len(ranks)
            self.comm_device = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"

    def _all_reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        import torch.distributed as dist

        out = t.detach().to(self.comm_device, torch.float64)
        dist.all_reduce(out, op=op, group=self.group)
        return out

    def normalise(self, raw: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(raw [B] / its sum over the (global) batch, the (global) batch size); ``raw`` non-negative."""
        if self.group is None:
            return raw / raw.sum(), float(len(raw))
        import torch.distributed as dist

        stats = self._all_reduce(torch.stack([raw.sum().double(), torch.tensor(float(len(raw)), dtype=torch.float64,
                                                                               device=raw.device)]), dist.ReduceOp.SUM)
        return raw / stats[0].to(raw.device, raw.dtype), float(stats[1])

    def softmax(self, score: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
        """(softmax of score / temperature over the (global) batch [B], the (global) batch size)."""
        z = score / temperature
        if self.group is None:
            return torch.softmax(z, dim=0), float(len(z))
        import torch.distributed as dist

        top = self._all_reduce(z.max().reshape(1), dist.ReduceOp.MAX)
        return self.normalise(torch.exp(z - top.to(z.device, z.dtype)))
