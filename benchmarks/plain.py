"""The plain PyTorch baseline the benchmarks compare against: what one writes first.

One network after another; a torch DataLoader (shuffle, batch 64) over the trial's sampled training set
(ROS/RUS drawn once, as a plain script would), the same model, SGD and lr policy as imbalance_core,
eval on the same balanced test set. Shares no code path with imbalance_core's loaders or trainer.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from imbalance_core.imbalance import make_subset
from imbalance_core.metrics import evaluate
from imbalance_core.models import build_model, freeze_all_but_last, last_layer_parameters
from imbalance_core.methods import get as method_spec
from imbalance_core.sampling import SamplingPlan
from imbalance_core.trial import TrialConfig


def _fit(model, params, x, y, idx, schedule, device, lr_scale=1.0):
    ds = torch.utils.data.TensorDataset(x[idx], y[idx])
    dl = torch.utils.data.DataLoader(ds, batch_size=schedule.batch_size, shuffle=True)  # keep tiny RUS sets
    opt = torch.optim.SGD(params, lr=schedule.base_lr * lr_scale, momentum=schedule.momentum,
                          weight_decay=schedule.weight_decay)
    t = 0
    model.train()
    while t < schedule.iterations:
        for xb, yb in dl:
            for g in opt.param_groups:
                g["lr"] = schedule.lr(t) * lr_scale
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb.float() / 256.0), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t += 1
            if t >= schedule.iterations:
                break


def plain_network(config: TrialConfig, ds, device: str = "cpu") -> dict:
    """Train and evaluate one MNIST network the plain way; returns metrics + seconds."""
    t0 = time.perf_counter()
    x, y = torch.from_numpy(ds.train_x), torch.from_numpy(ds.train_y.astype(np.int64))
    sub = make_subset(ds.train_y, config.dataset, config.imbalance, config.n, config.rho, config.mu, config.seed)
    steps = [ph.sampler for ph in method_spec(config.method).phases]
    model = build_model("lenet5", 10, seed=config.seed).to(device)
    idx = torch.from_numpy(SamplingPlan(sub, ds.train_y, sampler=steps[0], level=config.level).epoch(0))
    _fit(model, model.parameters(), x, y, idx, config.schedule, device)
    if len(steps) == 2:
        freeze_all_but_last(model)
        _fit(model, last_layer_parameters(model), x, y, torch.from_numpy(sub.indices), config.schedule, device, 0.1)
    model.eval()
    with torch.no_grad():
        scores = torch.softmax(model(torch.from_numpy(ds.test_x).to(device).float() / 256.0), 1).cpu().numpy()
    m = evaluate(ds.test_y, scores, sub.priors)
    m["seconds"] = time.perf_counter() - t0
    return m
