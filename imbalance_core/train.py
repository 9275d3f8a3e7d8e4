"""Training: the study's schedules and one loop that trains K networks of one shape at once.

K networks are held as one set of stacked parameters (leading dim K) and run with
`torch.func.vmap(functional_call)`; each has its own initialisation, batches and optimiser
state. Plain SGD with momentum and weight decay is element-wise, so one optimiser over the
stacked tensors is exactly K independent optimisers. With K = 1 the module runs directly.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap


@dataclass(frozen=True)
class Schedule:
    """SGD schedule of one dataset (STUDY.md, "Networks and training")."""
    iterations: int
    batch_size: int
    base_lr: float
    momentum: float
    weight_decay: float
    policy: str                                  # 'inv' | 'multistep' | 'linear'
    milestones: tuple[float, ...] = ()           # multistep: fractions of `iterations`
    gamma: float = 0.1                           # multistep factor; inv: gamma of Caffe's inv policy
    power: float = 0.75                          # inv policy power

    def lr(self, t: int) -> float:
        if self.policy == "inv":                 # Caffe: base_lr * (1 + gamma * t) ^ -power
            return self.base_lr * (1.0 + self.gamma * t) ** (-self.power)
        if self.policy == "multistep":
            passed = sum(t >= round(m * self.iterations) for m in self.milestones)
            return self.base_lr * self.gamma ** passed
        if self.policy == "linear":              # Caffe's poly, power 1: 0 at t = iterations (after the last step)
            return self.base_lr * max(0.0, 1.0 - t / self.iterations)
        raise ValueError(f"lr policy {self.policy!r} is unknown; choose inv, multistep or linear")


SCHEDULES = {
    # LeNet-5: lr_t = 0.01 (1 + 1e-4 t)^-0.75, batch 64, wd 5e-4, 10,000 iterations
    "mnist": Schedule(10_000, 64, 0.01, 0.9, 5e-4, "inv", gamma=1e-4, power=0.75),
    # All-CNN-C: batch 256, wd 1e-3, 70,000 iterations, x0.1 at 40k, 50k, 60k; base lr searched
    "cifar10": Schedule(70_000, 256, 0.05, 0.9, 1e-3, "multistep", milestones=(4 / 7, 5 / 7, 6 / 7)),
    # ResNet-10: lr 0.1 decaying linearly to 0, batch 256, wd 1e-4, 320,000 iterations
    "imagenet": Schedule(320_000, 256, 0.1, 0.9, 1e-4, "linear"),
}
SCHEDULES["mnist-sample"] = SCHEDULES["mnist"]
CIFAR10_BASE_LRS = (0.05, 0.005, 0.0005, 0.00005)


def schedule_for(dataset: str, iterations: int | None = None, base_lr: float | None = None,
                 batch_size: int | None = None) -> Schedule:
    s = SCHEDULES[dataset]
    if iterations is not None:
        if int(iterations) < 1:
            raise ValueError(f"iterations={iterations!r} is not allowed: need an integer >= 1")
        s = replace(s, iterations=int(iterations))
    if base_lr is not None:
        if not base_lr > 0:
            raise ValueError(f"lr={base_lr!r} is not allowed: need a positive base learning rate")
        s = replace(s, base_lr=float(base_lr))
    if batch_size is not None:
        s = replace(s, batch_size=int(batch_size))
    return s


class StackedNets:
    """K networks of one architecture as stacked parameters; forward maps (K, B, ...) -> (K, B, C)."""

    def __init__(self, models: list[torch.nn.Module], device, channels_last: bool = False):
        self.K = len(models)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.template = copy.deepcopy(models[0]).to(self.device)
        self.last_layers = tuple(getattr(models[0], "last_layers", ()))
        if self.K == 1:
            self.module = self.template
            if channels_last:
                self.module = self.module.to(memory_format=torch.channels_last)
            self.params = dict(self.module.named_parameters())
            self.buffers = dict(self.module.named_buffers())
        else:
            params, buffers = stack_module_state([m.to(self.device) for m in models])
            self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            self.buffers = buffers
            self.template = self.template.to("meta")
            self._call = vmap(self._one, in_dims=(0, 0, 0), randomness="different")

    def _one(self, params, buffers, x):
        return functional_call(self.template, (params, buffers), (x,))

    def train(self, mode: bool = True):
        (self.module if self.K == 1 else self.template).train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.K == 1:
            if self.channels_last and x.dim() == 5:
                return self.module(x[0].contiguous(memory_format=torch.channels_last)).unsqueeze(0)
            return self.module(x[0]).unsqueeze(0)
        return self._call(self.params, self.buffers, x)

    def parameters(self, only_last: bool = False) -> list[torch.Tensor]:
        names = [n for n in self.params if not only_last or n.split(".")[0] in self.last_layers]
        if only_last and not names:
            raise ValueError("this model declares no last_layers to fine-tune")
        return [self.params[n] for n in names]

    def set_trainable(self, only_last: bool) -> None:
        for n, p in self.params.items():
            p.requires_grad_(not only_last or n.split(".")[0] in self.last_layers)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        if self.K == 1:
            return [{k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}]
        both = {**self.params, **self.buffers}
        return [{k: v[i].detach().cpu().clone() for k, v in both.items()} for i in range(self.K)]


@dataclass
class TrainStats:
    iterations: int
    images: int
    seconds: float
    final_loss: list[float]

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train(nets: StackedNets, loader, schedule: Schedule, lr_scale: float = 1.0, only_last: bool = False,
          log_every: int = 0, log=print) -> TrainStats:
    """Run `schedule` on all K networks; `loader` yields (x (K,B,...), y (K,B)) `schedule.iterations` times."""
    nets.set_trainable(only_last)
    nets.train(True)
    opt = torch.optim.SGD(nets.parameters(only_last), lr=schedule.base_lr * lr_scale,
                          momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    K, t0, done, images, loss_k = nets.K, time.perf_counter(), 0, 0, None
    for x, y in loader:
        if done >= schedule.iterations:
            break
        for g in opt.param_groups:
            g["lr"] = schedule.lr(done) * lr_scale
        logits = nets(x)                                                  # (K, B, C)
        loss_k = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(K, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        loss_k.sum().backward()                                           # each net's grad = its own mean loss
        opt.step()
        done += 1
        images += y.numel()
        if log_every and done % log_every == 0:
            log(f"iter {done}/{schedule.iterations} loss {loss_k.detach().mean().item():.4f} "
                f"lr {schedule.lr(done - 1):.2e}")
    if nets.device.type == "cuda":
        torch.cuda.synchronize(nets.device)
    seconds = time.perf_counter() - t0
    final = [float(v) for v in loss_k.detach().cpu()] if loss_k is not None else [math.nan] * K
    if any(not math.isfinite(v) for v in final):
        raise FloatingPointError(f"training diverged: final losses {final} (try a smaller learning rate)")
    return TrainStats(done, images, seconds, final)


@torch.no_grad()
def predict(nets: StackedNets, batches) -> torch.Tensor:
    """Softmax scores (K, N, C) of all K networks on the same test batches (x (B, ...), y (B,))."""
    nets.train(False)
    out = []
    for x, _ in batches:
        xk = x.unsqueeze(0).expand(nets.K, *x.shape)
        out.append(torch.softmax(nets(xk).float(), dim=-1).cpu())
    return torch.cat(out, dim=1)
