"""Phase 2 of two-phase training on cached features, where that is exact.

Phase 2 fine-tunes only a network's `last_layers` (STUDY.md: lr x 0.1, the imbalanced subset).
When every layer below them is deterministic in training mode (no dropout, no batch norm: LeNet-5
declares `cacheable_features`) and the inputs are not augmented (the in-memory arrays of the
`tensor` loader), the frozen layers map an image to the same features at every iteration. So the
features of each training image the phase will draw, and of the test set, are computed once, and
the head alone trains on them: the same batches, the same SGD steps (weight decay, momentum and the
bias lr multiplier on the head only, as in the full network), without 10,000 repeated forward passes through the frozen
layers. `FeatureCache` is that cache, a batch source of `trial.fit` (the one training loop): phase 2 on it
equals full fine-tuning up to floating-point reassociation (tests/test_trial.py).
Measured by benchmarks/phase2_cache.py (docs/performance.md, "The training path": identical test scores). At
a few hundred iterations, fewer draws than the subset holds, the two cost about the same.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .loaders import ArrayData, TensorLoader
from .preprocess import identity
from .sampling import SamplingPlan
from .train import StackedNets


def can_cache(model: torch.nn.Module | type, backend: str) -> bool:
    """True when phase 2 of `model` (a module or its class) may run on cached features (see above)."""
    return bool(getattr(model, "cacheable_features", False)) and backend == "tensor"


@torch.no_grad()
def features(model: torch.nn.Module, data: ArrayData, rows: np.ndarray | None = None,
             batch_size: int = 1000) -> torch.Tensor:
    """`model.features` of data rows `rows` (all rows when None), in that order."""
    channels_last = data.x.device.type == "cpu" and data.x.dim() == 4
    model = model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    n = len(data.y) if rows is None else len(rows)
    rows_t = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(data.x.device)
    out = []
    for s in range(0, n, batch_size):
        x = data.x[s:s + batch_size] if rows_t is None else data.x[rows_t[s:s + batch_size]]
        x = data.to_input(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model.features(x))
    return torch.cat(out) if out else torch.empty(0)


class FeatureCache:
    """A batch source for `trial.fit`: phase 2 of a group of phase-1 `models` on cached features.

    The features of every training image their `plans` will draw in `iterations` steps of `batch_size`, and
    of the test set, are computed once; `heads` (copies of the models' last layers) then train on them with
    the one training loop (`trial.fit(..., source=cache)`): `loader` gives the same batches as the images
    would, as rows of the cache. `score` gives the trained heads' test-set softmax scores. `seconds`: the
    time the cache took (each network's TrainStats carries its share).
    """

    def __init__(self, models: list[torch.nn.Module], plans: list[SamplingPlan], train_data: ArrayData,
                 test_data: ArrayData, batch_size: int, iterations: int, device: torch.device,
                 test_features: list[torch.Tensor | None] | None = None):
        """test_features[k]: model k's test-set features if already computed (when phase 1 scored it)."""
        t0 = time.perf_counter()
        train_data, test_data = train_data.to(device), test_data.to(device)
        feats, ys, self.tables, self.tests, self.heads, offset = [], [], [], [], [], 0
        for model, plan, test_f in zip(models, plans, test_features or [None] * len(models)):
            model = model.to(device)
            drawn = np.unique(plan.stream().take(iterations * batch_size))   # every image this phase will see
            table = np.full(len(plan.labels), -1, dtype=np.int64)
            table[drawn] = offset + np.arange(len(drawn))
            offset += len(drawn)
            feats.append(features(model, train_data, drawn))
            ys.append(train_data.y[torch.from_numpy(drawn).to(device)])
            self.tables.append(table)
            self.tests.append(features(model, test_data) if test_f is None else test_f.to(device))
            self.heads.append(copy.deepcopy(model.head()))
        self.data = ArrayData(torch.cat(feats), torch.cat(ys), identity)
        self.bias_lr_mult = float(getattr(models[0], "bias_lr_mult", 1.0))   # the full network's, on its head
        self.seconds = time.perf_counter() - t0

    def loader(self, plans: list[SamplingPlan], batch_size: int, iterations: int) -> TensorLoader:
        """The batches of `plans` (those the cache was built for, in its order), as rows of the cache."""
        return TensorLoader(self.data, plans, batch_size, iterations, remap=self.tables)

    @torch.no_grad()
    def score(self, nets: StackedNets) -> np.ndarray:
        """Test-set softmax scores (K, N, C) of the trained heads (`nets`, stacked in the cache's order)."""
        nets.train(False)
        n = len(self.tests[0])
        return torch.cat([torch.softmax(nets(torch.stack([t[s:s + 1000] for t in self.tests])).float(), dim=-1).cpu()
                          for s in range(0, n, 1000)], dim=1).numpy()
