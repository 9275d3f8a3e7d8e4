"""Training losses of the methods (STUDY.md, "Methods" and "Beyond the paper").

Every loss is built for one network from its imbalanced subset's class counts n_c (before any
resampling) and the phase's iteration budget, and maps (logits (B, C), labels (B,), iteration t) to
the batch's mean loss:

  ce        cross-entropy (the paper's methods)
  la        logit-adjusted cross-entropy (Menon et al. 2021): CE(z + tau log pi), pi_c = n_c / sum n
  cb-focal  class-balanced focal loss (Cui et al. 2019), softmax form (not the sigmoid one of the CB
            paper's own focal term): mean_b  w_y (1 - p_y)^gamma (-log p_y),
            w_c = (1 - beta) / (1 - beta^n_c) normalised so that sum_c w_c = C
  ldam-drw  LDAM (Cao et al. 2019): CE(s (z - Delta_y e_y)) with Delta_c = max_margin (n_min / n_c)^(1/4)
            (so the largest margin is max_margin), on the logits of a cosine classifier (models.NormedLinear,
            logits in [-1, 1], as the authors' code) with s = 30; deferred re-weighting: plain mean for the
            first (1 - drw_fraction) of the budget, then the class-balanced weights w_c (beta), as a
            weighted mean (torch's cross_entropy with `weight`, as the authors' code).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
LOSSES = ("ce", "la", "cb-focal", "ldam-drw")


def class_balanced_weights(counts, beta: float) -> torch.Tensor:
    """Cui et al.'s w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C (beta = 0: all ones)."""
    n = np.asarray(counts, dtype=np.float64)
    eff = 1.0 - np.power(beta, n)
    w = (1.0 - beta) / eff
    w = w / w.sum() * len(n)
    return torch.as_tensor(w, dtype=torch.float32)


def ldam_margins(counts, max_margin: float) -> torch.Tensor:
    """Delta_c = K / n_c^(1/4), K chosen so that the largest margin (the smallest class) is `max_margin`."""
    n = np.asarray(counts, dtype=np.float64)
    d = 1.0 / np.power(n, 0.25)
    return torch.as_tensor(d * (max_margin / d.max()), dtype=torch.float32)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, t: int = 0) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def build(loss: str, counts, iterations: int, params: dict, device) -> LossFn:
    """The loss `loss` of one network whose imbalanced subset has per-class `counts`."""
    if loss == "ce":
        return cross_entropy
    if loss == "la":
        n = torch.as_tensor(np.asarray(counts, dtype=np.float64), dtype=torch.float32, device=device)
        shift = params["tau"] * torch.log(n / n.sum())

        def la(logits, y, t=0):
            return F.cross_entropy(logits + shift, y)
        return la
    if loss == "cb-focal":
        w = class_balanced_weights(counts, params["beta"]).to(device)
        gamma = float(params["gamma"])

        def cb_focal(logits, y, t=0):
            logp = F.log_softmax(logits.float(), dim=-1).gather(1, y[:, None])[:, 0]
            return (w[y] * (1 - logp.exp()).pow(gamma) * -logp).mean()
        return cb_focal
    if loss == "ldam-drw":
        margins = ldam_margins(counts, params["max_margin"]).to(device)
        w = class_balanced_weights(counts, params["beta"]).to(device)
        s, start = float(params["scale"]), int(math.floor((1.0 - params["drw_fraction"]) * iterations + 0.5))

        def ldam(logits, y, t=0):
            z = logits - F.one_hot(y, logits.shape[-1]).to(logits.dtype) * margins[y][:, None]
            return F.cross_entropy(s * z, y, weight=w if t >= start else None)
        return ldam
    raise ValueError(f"loss {loss!r} is unknown; choose one of {', '.join(LOSSES)}")
