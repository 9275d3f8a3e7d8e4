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

`LOSSES` is the registry: a loss is one entry, its builder decorated with `@loss(name, param=range, ...)`,
naming the hyper-parameters it reads from its method's spec (`methods.MethodSpec.params`) and the range each
may take; `build` looks the name up, and `methods.validate` refuses a spec whose losses read a
hyper-parameter it does not give, or that gives one no loss of it reads.

A stack of networks (train.py, K > 1) computes its losses in one batched call, whatever mix of losses and
hyper-parameters it holds (`stacked`): every loss above is one case of `Terms` (a loss function built here
carries its own as `.terms`). A loss registered without terms still trains, stacked, as a loop of K calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# (counts, iterations, params, device) -> the loss of one network: counts = its imbalanced subset's class
# counts (before any resampling), iterations = the phase's budget, params = its method's hyper-parameters
Builder = Callable[[object, int, dict, object], LossFn]


@dataclass(frozen=True)
class Range:
    """The values a hyper-parameter may take: low..high, each end inclusive or not."""
    low: float
    high: float
    low_inclusive: bool = True
    high_inclusive: bool = True

    def __contains__(self, v: float) -> bool:
        return (not math.isnan(v) and (v >= self.low if self.low_inclusive else v > self.low)
                and (v <= self.high if self.high_inclusive else v < self.high))

    def __str__(self) -> str:
        return (f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}"
                f"{']' if self.high_inclusive else ')'}")


@dataclass(frozen=True)
class LossSpec:
    """One registered loss: its builder and the hyper-parameters it reads (name -> allowed range)."""
    name: str
    build: Builder
    params: dict[str, Range]


LOSSES: dict[str, LossSpec] = {}


def loss(name: str, **params: Range):
    """Register the decorated builder as loss `name`, reading hyper-parameters `params` (name=Range)."""
    def register(build: Builder) -> Builder:
        LOSSES[name] = LossSpec(name, build, dict(params))
        return build
    return register


def get(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} is unknown; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


def build(name: str, counts, iterations: int, params: dict, device) -> LossFn:
    """The loss `name` of one network whose imbalanced subset has per-class `counts`."""
    return get(name).build(counts, iterations, params, device)


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


@dataclass(frozen=True)
class Terms:
    """One network's loss in the form that covers every loss of the registry, for a batch of B examples:

        loss = sum_b w_b (1 - p_b)^gamma (-log p_b) / norm,   p_b = softmax(scale (z_b + shift - margin_y e_y))_y

    w_b = weight[y_b] from iteration `weight_from` on (before: 1); norm = sum_b w_b where `weighted_mean` and
    the weights apply, else B. Tensors are (C,) on the loss's device; None is zeros (shift, margin) or ones."""
    shift: torch.Tensor | None = None
    margin: torch.Tensor | None = None
    scale: float = 1.0
    weight: torch.Tensor | None = None
    weight_from: int = 0
    weighted_mean: bool = False
    gamma: float = 0.0


cross_entropy.terms = Terms()


def _with_terms(fn: LossFn, terms: Terms) -> LossFn:
    fn.terms = terms
    return fn


def stacked(losses: list[LossFn], device) -> Callable | None:
    """One call for the losses of a stack of K networks: (logits (K, B, C), y (K, B), t) -> (K,) mean losses,
    each as its own loss function computes it (to float rounding: one fused form, `Terms`). None where a loss
    has no `terms` (the caller loops)."""
    terms = [getattr(fn, "terms", None) for fn in losses]
    if any(t is None for t in terms):
        return None
    dev = torch.device(device)

    def per(name: str, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor([getattr(t, name) for t in terms], dtype=dtype, device=dev)
    scale, gamma, weighted = per("scale"), per("gamma"), per("weighted_mean", torch.bool)
    weight_from = per("weight_from", torch.int64)
    has_margin = any(t.margin is not None for t in terms)
    focal = any(t.gamma != 0 for t in terms)
    one = torch.ones((), device=dev)
    rows: dict[str, torch.Tensor] = {}

    def row(name: str, default: float, C: int) -> torch.Tensor:        # (K, C), built at the first call
        if name not in rows:
            rows[name] = torch.stack([getattr(t, name).to(dev, torch.float32) if getattr(t, name) is not None
                                      else torch.full((C,), default, device=dev) for t in terms])
        return rows[name]

    def loss(logits: torch.Tensor, y: torch.Tensor, t: int = 0) -> torch.Tensor:
        C = logits.shape[-1]
        z = logits.float() + row("shift", 0.0, C)[:, None, :]
        if has_margin:
            z = z - F.one_hot(y, C).to(z.dtype) * row("margin", 0.0, C).gather(1, y)[..., None]
        logp = F.log_softmax(scale[:, None, None] * z, dim=-1).gather(-1, y[..., None])[..., 0]   # (K, B)
        on = weight_from <= t                                                           # (K,): weights apply
        w = torch.where(on[:, None], row("weight", 1.0, C).gather(1, y), one)
        term = w * -logp
        if focal:
            term = term * (1 - logp.exp()).pow(gamma[:, None])
        norm = torch.where(weighted & on, w.sum(1), torch.full_like(scale, y.shape[1]))
        return term.sum(1) / norm
    return loss


TAU = Range(0.0, 10.0)
BETA = Range(0.0, 1.0, high_inclusive=False)


@loss("ce")
def _ce(counts, iterations, params, device) -> LossFn:
    return cross_entropy                      # the one function train() computes for a whole stack at once


@loss("la", tau=TAU)
def _la(counts, iterations, params, device) -> LossFn:
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64), dtype=torch.float32, device=device)
    shift = params["tau"] * torch.log(n / n.sum())

    def la(logits, y, t=0):
        return F.cross_entropy(logits + shift, y)
    return _with_terms(la, Terms(shift=shift))


@loss("cb-focal", beta=BETA, gamma=Range(0.0, math.inf, high_inclusive=False))
def _cb_focal(counts, iterations, params, device) -> LossFn:
    w = class_balanced_weights(counts, params["beta"]).to(device)
    gamma = float(params["gamma"])

    def cb_focal(logits, y, t=0):
        logp = F.log_softmax(logits.float(), dim=-1).gather(1, y[:, None])[:, 0]
        return (w[y] * (1 - logp.exp()).pow(gamma) * -logp).mean()
    return _with_terms(cb_focal, Terms(weight=w, gamma=gamma))


@loss("ldam-drw", max_margin=Range(0.0, math.inf, False, False), scale=Range(0.0, math.inf, False, False),
      drw_fraction=Range(0.0, 1.0), beta=BETA)
def _ldam_drw(counts, iterations, params, device) -> LossFn:
    margins = ldam_margins(counts, params["max_margin"]).to(device)
    w = class_balanced_weights(counts, params["beta"]).to(device)
    s, start = float(params["scale"]), int(math.floor((1.0 - params["drw_fraction"]) * iterations + 0.5))

    def ldam(logits, y, t=0):
        z = logits - F.one_hot(y, logits.shape[-1]).to(logits.dtype) * margins[y][:, None]
        return F.cross_entropy(s * z, y, weight=w if t >= start else None)
    return _with_terms(ldam, Terms(margin=margins, scale=s, weight=w, weight_from=start, weighted_mean=True))
