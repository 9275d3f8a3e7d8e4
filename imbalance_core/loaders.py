"""Loader backends: every one turns K sampling plans into batches of shape (K, B, ...) on the device.

  tensor  the whole (pre-processed) training array lives on the device; a batch is one gather by
          index. For MNIST and CIFAR-10, which fit in GPU memory (and in RAM here).
  torch   a torch.utils.data.DataLoader per network over the same plans (decodes ImageNet files
          with PIL); also the plain baseline that benchmarks compare against.
  ffcv    FFCV .beton files (imbalance_core/ffcv_data.py), for JPEG-bound ImageNet.

Every backend yields exactly `iterations` batches of exactly `batch_size` per network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .sampling import SamplingPlan

BACKENDS = ("auto", "tensor", "torch", "ffcv")


@dataclass
class ArrayData:
    """A training or test array ready for a loader: `x` raw or pre-processed, `to_input` finishes it per batch."""
    x: torch.Tensor
    y: torch.Tensor
    to_input: Callable[[torch.Tensor], torch.Tensor]

    def to(self, device) -> "ArrayData":
        return ArrayData(self.x.to(device), self.y.to(device), self.to_input)


class TensorLoader:
    """Device-resident loader: indices are drawn on the host in blocks, the gather runs on the device."""

    def __init__(self, data: ArrayData, plans: list[SamplingPlan], batch_size: int, iterations: int,
                 block: int = 32, remap: list[np.ndarray] | None = None, start: int = 0):
        """remap[k]: a lookup table from the indices plan k draws to rows of `data` (e.g. cached features).
        start: the iterations already trained (a phase resumed from a checkpoint): each plan's stream skips
        the batches they drew, and the loader yields the iterations start..iterations-1, the same batches an
        uninterrupted loader yields there."""
        self.data, self.plans, self.B, self.iterations, self.block = data, plans, batch_size, iterations, block
        self.start = int(start)
        if remap is not None and len(remap) != len(plans):
            raise ValueError(f"remap has {len(remap)} tables for {len(plans)} plans")
        self.remap = remap

    def __len__(self) -> int:
        return self.iterations - self.start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data.x, self.data.y
        streams = [p.stream() for p in self.plans]
        K, B = len(streams), self.B
        for s in streams:
            s.take(self.start * B)                  # the batches a resumed phase trained already
        for start in range(self.start, self.iterations, self.block):
            nb = min(self.block, self.iterations - start)
            idx = np.stack([s.take(nb * B) for s in streams]).reshape(K, nb, B)
            if self.remap is not None:
                idx = np.stack([table[i] for table, i in zip(self.remap, idx)])
                if (idx < 0).any():
                    raise IndexError("a plan drew an index that its remap table does not cover")
            idx = torch.from_numpy(idx)
            if x.device.type == "cuda":          # pinned (PyTorch's caching host allocator): the copy is truly
                idx = idx.pin_memory()           # asynchronous, no stream sync every `block` steps
            idx = idx.to(x.device, non_blocking=True)
            for j in range(nb):
                ij = idx[:, j]
                yield self.data.to_input(x[ij]), y[ij]


class _PlanBatchSampler(torch.utils.data.Sampler):
    def __init__(self, plan: SamplingPlan, batch_size: int, iterations: int, start: int = 0):
        self.plan, self.B, self.iterations, self.start = plan, batch_size, iterations, int(start)

    def __len__(self):
        return self.iterations - self.start

    def __iter__(self):
        stream = self.plan.stream()
        stream.take(self.start * self.B)            # the batches a resumed phase trained already
        for _ in range(self.start, self.iterations):
            yield stream.take(self.B).tolist()


class TorchLoader:
    """One DataLoader per network over a map-style dataset; batches stacked to (K, B, ...)."""

    def __init__(self, dataset: torch.utils.data.Dataset, plans: list[SamplingPlan], batch_size: int,
                 iterations: int, device, num_workers: int = 0,
                 to_input: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, start: int = 0):
        """start: as TensorLoader's (the indices are the same; a random augmentation of decoded files, drawn
        in the DataLoader's workers, is not resumed: ImageNet's crops after a resume differ)."""
        self.loaders = [torch.utils.data.DataLoader(
            dataset, batch_sampler=_PlanBatchSampler(p, batch_size, iterations, start), num_workers=num_workers,
            pin_memory=torch.device(device).type == "cuda", persistent_workers=False) for p in plans]
        self.device, self.iterations, self.to_input = torch.device(device), iterations, to_input
        self.start = int(start)

    def __len__(self) -> int:
        return self.iterations - self.start

    def __iter__(self):
        for batches in zip(*self.loaders):
            xs = torch.stack([b[0] for b in batches]).to(self.device, non_blocking=True)
            ys = torch.stack([b[1] for b in batches]).to(self.device, non_blocking=True)
            yield self.to_input(xs), ys


class InMemoryDataset(torch.utils.data.Dataset):
    """Map-style view of in-memory arrays (for the torch backend)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def eval_batches(data: ArrayData, batch_size: int = 1000):
    """The test set in order, in chunks, finished by `to_input`."""
    for s in range(0, len(data.y), batch_size):
        yield data.to_input(data.x[s:s + batch_size]), data.y[s:s + batch_size]
