"""Training: the study's schedules and one loop that trains K networks of one shape at once.

K networks are held as one set of stacked parameters (leading dim K) and run with
`torch.func.vmap(functional_call)`; each has its own initialisation, batches and optimiser
state. Plain SGD with momentum and weight decay is element-wise, so one optimiser over the
stacked tensors is exactly K independent optimisers. With K = 1 the module runs directly.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .losses import cross_entropy
from .losses import stacked as stacked_losses
from .specs import DATASETS as _SPECS
from .specs import Schedule  # noqa: F401  (re-exported: the schedule of a dataset)
from .models import param_lr_mults


CIFAR10_BASE_LRS = (0.05, 0.005, 0.0005, 0.00005)


def schedule_for(dataset: str, iterations: int | None = None, base_lr: float | None = None,
                 batch_size: int | None = None) -> Schedule:
    s = _SPECS[dataset].schedule
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

    def __init__(self, models: list[torch.nn.Module], device, channels_last: bool = False,
                 bias_lr_mult: float | None = None, noise_seeds: list | None = None):
        """bias_lr_mult: lr multiplier of Conv/Linear biases (default: the model class's, Caffe's lr_mult).
        noise_seeds: one seed per network (an int or a tuple of ints) for a model with `dropout` layers: each
        network draws its masks from its own generator, so that its training depends on its own seed only,
        never on the other networks of its stack or their order (required to stack such a model)."""
        self.K = len(models)
        self.dropout = tuple(getattr(models[0], "dropout", ()))
        if self.dropout and noise_seeds is None and self.K > 1:
            raise ValueError(f"{type(models[0]).__name__} has dropout: stacking it needs noise_seeds (one per "
                             f"network), so that each network's masks are its own")
        self.generators = None
        if self.dropout and noise_seeds is not None:
            if len(noise_seeds) != self.K:
                raise ValueError(f"noise_seeds: {len(noise_seeds)} seeds for {self.K} networks")
            self.generators = [torch.Generator(device=device).manual_seed(_noise_seed(s)) for s in noise_seeds]
        self.bias_lr_mult = float(getattr(models[0], "bias_lr_mult", 1.0) if bias_lr_mult is None
                                  else bias_lr_mult)
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
            self._call_noise = vmap(self._one, in_dims=(0, 0, 0, 0), randomness="error")
        self.training = True

    def _one(self, params, buffers, x, noise=None):
        return functional_call(self.template, (params, buffers), (x,) if noise is None else (x, noise))

    def train(self, mode: bool = True):
        self.training = mode
        (self.module if self.K == 1 else self.template).train(mode)

    def _noise(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Each network's dropout masks for the batch x (K, B, ...), from its own generator: {layer: (K, ...)}."""
        if not (self.training and self.generators):
            return None
        shapes = self.template.noise_shapes(tuple(x.shape[1:]))
        out = {}
        for name in self.dropout:
            p = float(getattr(self.template, name).p)          # the module's own p (0: a mask of ones)
            masks = [torch.empty(shapes[name], device=x.device, dtype=x.dtype).bernoulli_(1 - p, generator=g)
                     for g in self.generators]
            out[name] = torch.stack(masks).div_(1 - p)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        noise = self._noise(x)
        if self.K == 1:
            x0 = x[0].contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 5 else x[0]
            return (self.module(x0) if noise is None else self.module(x0, {k: v[0] for k, v in noise.items()})
                    ).unsqueeze(0)
        if noise is None:
            return self._call(self.params, self.buffers, x)
        return self._call_noise(self.params, self.buffers, x, noise)

    def parameters(self, only_last: bool = False) -> list[torch.Tensor]:
        return [self.params[n] for n in self._names(only_last)]

    def _names(self, only_last: bool) -> list[str]:
        names = [n for n in self.params if not only_last or n.split(".")[0] in self.last_layers]
        if only_last and not names:
            raise ValueError("this model declares no last_layers to fine-tune")
        return names

    def param_groups(self, only_last: bool = False) -> list[dict]:
        """SGD parameter groups by Caffe lr_mult: weights 1x, biases `bias_lr_mult` (decay applies to both)."""
        names = self._names(only_last)
        groups: dict[float, list[torch.Tensor]] = {}
        for n, mult in zip(names, param_lr_mults(names, self.bias_lr_mult)):
            groups.setdefault(mult, []).append(self.params[n])
        return [{"params": ps, "lr_mult": mult} for mult, ps in groups.items()]

    def set_trainable(self, only_last: bool) -> None:
        for n, p in self.params.items():
            p.requires_grad_(not only_last or n.split(".")[0] in self.last_layers)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        if self.K == 1:
            return [{k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}]
        both = {**self.params, **self.buffers}
        return [{k: v[i].detach().cpu().clone() for k, v in both.items()} for i in range(self.K)]


def _noise_seed(seed) -> int:
    """A generator seed from a network's noise seed (an int or a tuple of ints: e.g. its seed and phase)."""
    parts = seed if isinstance(seed, (tuple, list)) else (seed,)
    h = 0xD50
    for p in parts:
        h = (h * 1_000_003 + int(p)) % (2 ** 63 - 1)
    return h


@dataclass
class PhaseState:
    """A phase cut off after `done` iterations: what resumes it bit for bit (train's `resume`). `params`: each
    network's parameters and buffers; `optimizer`: the SGD state (momentum buffers); `generators`: the state of
    each network's own generator (dropout); `images` and `seconds`: the counts so far."""
    done: int
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    optimizer: dict
    generators: list[torch.Tensor] | None
    images: int
    seconds: float

    def to_dict(self) -> dict:
        """Plain containers of CPU tensors and numbers (torch.save / torch.load(weights_only=True))."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: "dict | PhaseState") -> "PhaseState":
        return d if isinstance(d, cls) else cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class TrainStats:
    iterations: int
    images: int
    seconds: float
    final_loss: list[float]

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _snapshot(nets: StackedNets, opt, done: int, images: int, seconds: float) -> PhaseState:
    params = nets.params if nets.K > 1 else dict(nets.module.named_parameters())
    buffers = nets.buffers if nets.K > 1 else dict(nets.module.named_buffers())
    return PhaseState(done, {k: v.detach().cpu().clone() for k, v in params.items()},
                      {k: v.detach().cpu().clone() for k, v in buffers.items()}, copy.deepcopy(opt.state_dict()),
                      [g.get_state() for g in nets.generators] if nets.generators else None, images, seconds)


def _restore(nets: StackedNets, opt, state: PhaseState) -> None:
    params = nets.params if nets.K > 1 else dict(nets.module.named_parameters())
    buffers = nets.buffers if nets.K > 1 else dict(nets.module.named_buffers())
    with torch.no_grad():
        for k, v in state.params.items():
            params[k].copy_(v)
        for k, v in state.buffers.items():
            buffers[k].copy_(v)
    opt.load_state_dict(state.optimizer)
    for g, s in zip(nets.generators or [], state.generators or []):
        g.set_state(s)


def train(nets: StackedNets, loader, schedule: Schedule, lr_scale: float = 1.0, only_last: bool = False,
          log_every: int = 0, log=print, losses=None, resume: PhaseState | None = None,
          checkpoint_every_s: float | None = None, on_checkpoint=None) -> TrainStats:
    """Run `schedule` on all K networks; `loader` yields (x (K,B,...), y (K,B)) `schedule.iterations` times.

    losses: one `losses.LossFn` per network ((logits (B, C), y (B,), t) -> mean loss); None = cross-entropy
    for all K, computed in one call. A stack of other losses (any mix) is computed in one call too
    (losses.stacked), or as a loop of K calls where a loss carries no `terms`.
    Checkpoints inside the phase: with `on_checkpoint`, every `checkpoint_every_s` seconds of training (0:
    after every iteration) the phase's state (`PhaseState`) is handed to on_checkpoint. `resume`: such a state;
    the networks (built as the phase started) take its parameters, buffers, optimiser and generator states,
    and training goes on at iteration `resume.done`; `loader` must then start there (TensorLoader's start).
    A phase resumed so ends with the same bits as the phase run through.
    """
    plain = losses is None or all(fn is cross_entropy for fn in losses)
    together = None if plain or nets.K == 1 else stacked_losses(losses, nets.device)
    nets.set_trainable(only_last)
    nets.train(True)
    opt = torch.optim.SGD(nets.param_groups(only_last), lr=schedule.base_lr * lr_scale,
                          momentum=schedule.momentum, weight_decay=schedule.weight_decay)
    K, t0, done, images, loss_k = nets.K, time.perf_counter(), 0, 0, None
    if resume is not None:
        _restore(nets, opt, resume)
        done, images, t0 = resume.done, resume.images, t0 - resume.seconds
    last_checkpoint = time.perf_counter()
    for x, y in loader:
        if done >= schedule.iterations:
            break
        for g in opt.param_groups:
            g["lr"] = schedule.lr(done) * lr_scale * g["lr_mult"]
        logits = nets(x)                                                  # (K, B, C)
        if plain:
            loss_k = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(K, -1).mean(1)
        elif together is not None:                                        # a stack: one batched call
            loss_k = together(logits, y, done)
        else:                                                             # one network, or a loss without terms
            loss_k = torch.stack([fn(logits[k], y[k], done) for k, fn in enumerate(losses)])
        opt.zero_grad(set_to_none=True)
        loss_k.sum().backward()                                           # each net's grad = its own mean loss
        opt.step()
        done += 1
        images += y.numel()
        if on_checkpoint is not None and done < schedule.iterations and \
                time.perf_counter() - last_checkpoint >= (checkpoint_every_s or 0):
            on_checkpoint(_snapshot(nets, opt, done, images, time.perf_counter() - t0))
            last_checkpoint = time.perf_counter()
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
