"""Phase 2 of two-phase training on cached features, where that is exact.

Phase 2 fine-tunes only a network's `last_layers` (STUDY.md: lr x 0.1, the imbalanced subset).
When every layer below them is deterministic in training mode (no dropout, no batch norm: LeNet-5
declares `cacheable_features`) and the inputs are not augmented (the in-memory arrays of the
`tensor` loader), the frozen layers map an image to the same features at every iteration. So the
features of each training image the phase will draw, and of the test set, are computed once, and
the head alone trains on them: the same batches, the same SGD steps (weight decay, momentum and the
bias lr multiplier on the head only, as in the full network), without 10,000 repeated forward passes through the frozen
layers. Results equal full fine-tuning up to floating-point reassociation (tests/test_trial.py).
Measured (benchmarks/phase2_cache.py, one CPU thread, 10,000 iterations, a 25,025-image subset): whole
network 127.2 s, cached features 17.4 s (7.3x), identical test scores. At a few hundred iterations, fewer
draws than the subset holds, the two cost about the same.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from .loaders import ArrayData, TensorLoader
from .preprocess import identity
from .sampling import SamplingPlan
from .train import Schedule, StackedNets, TrainStats, train


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


def finetune_heads(models: list[torch.nn.Module], plans: list[SamplingPlan], train_data: ArrayData,
                   test_data: ArrayData, schedule: Schedule, device: torch.device, lr_scale: float,
                   stack: bool, test_features: list[torch.Tensor | None] | None = None
                   ) -> tuple[np.ndarray, list[TrainStats], list[dict[str, torch.Tensor]]]:
    """Fine-tune the heads of phase-1 `models` on their `plans`.

    Returns (test scores (K, N, C), stats per network, the trained heads' state dicts (CPU tensors)).

    `stack`: train the K heads as one vmap-stacked model (CUDA) or one after another (CPU).
    `test_features[k]`: model k's test-set features if already computed (when phase 1 scored it).
    """
    B, T = schedule.batch_size, schedule.iterations
    t0 = time.perf_counter()
    train_data, test_data = train_data.to(device), test_data.to(device)
    feats, ys, tables, tests, heads, offset = [], [], [], [], [], 0
    test_features = test_features or [None] * len(models)
    for model, plan, test_f in zip(models, plans, test_features):
        model = model.to(device)
        drawn = np.unique(plan.stream().take(T * B))            # every image this phase will see
        table = np.full(len(plan.labels), -1, dtype=np.int64)
        table[drawn] = offset + np.arange(len(drawn))
        offset += len(drawn)
        feats.append(features(model, train_data, drawn))
        ys.append(train_data.y[torch.from_numpy(drawn).to(device)])
        tables.append(table)
        tests.append(features(model, test_data) if test_f is None else test_f.to(device))
        heads.append(copy.deepcopy(model.head()))
    data = ArrayData(torch.cat(feats), torch.cat(ys), identity)
    cache_share = (time.perf_counter() - t0) / len(models)

    groups = [list(range(len(models)))] if stack else [[k] for k in range(len(models))]
    scores: list = [None] * len(models)
    stats: list = [None] * len(models)
    trained: list = [None] * len(models)
    for g in groups:
        nets = StackedNets([heads[k] for k in g], device, bias_lr_mult=getattr(models[0], "bias_lr_mult", 1.0))
        loader = TensorLoader(data, [plans[k] for k in g], B, T, remap=[tables[k] for k in g])
        st = train(nets, loader, schedule, lr_scale=lr_scale)
        nets.train(False)
        with torch.no_grad():
            sc = [torch.softmax(nets(torch.stack([tests[k][s:s + 1000] for k in g])).float(), dim=-1).cpu()
                  for s in range(0, len(test_data.y), 1000)]
        sc = torch.cat(sc, dim=1).numpy()
        for j, (k, sd) in enumerate(zip(g, nets.state_dicts())):
            scores[k], trained[k] = sc[j], sd
            stats[k] = TrainStats(st.iterations, st.images // len(g), st.seconds / len(g) + cache_share,
                                  [st.final_loss[j]])
    return np.stack(scores), stats, trained

