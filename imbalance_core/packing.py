"""How many networks a pack holds, chosen from the device (measured; see benchmarks/grid_throughput.py).

CPU: a pack's networks train one after another in one process (vmap-stacking measured no faster on
these cores: K=4 stacked 1,771 vs K=1 1,733 images/s per thread, while channels_last on a single
network gave ~1.8x). A pack still pays one process start, one dataset load and one set of test batches,
and a two-phase network shares its first phase with the plain ROS/RUS network of the same seed, so
the default CPU pack is the methods of one (cell, seed): 5 networks, 3 of them fully trained.

CUDA: a pack's networks are stacked (torch.func.vmap over stacked parameters), which turns K small
networks into one set of large kernels; K is bounded by memory and by MAX_STACK:

    K = min(MAX_STACK, HEADROOM x usable_memory(device, fraction) // network_bytes(model, batch))

`usable_memory` is what this trial may still use on the device:
  * PyTorch's own cache counts as free: the caching allocator keeps what an earlier pack freed (Tune
    reuses a trial's actor for the next trial), and `mem_get_info` reports that as used. Free = the
    device's free memory + this process's reserved-but-unallocated bytes (`auto_pack_size` also
    empties the cache first, at a pack's start, so that a trial sharing the GPU can have it).
  * Scaled by the share of the GPU Ray gave the trial (`fraction`, e.g. 0.5 with `--gpus-per-trial
    0.5`) and by `torch.cuda.set_per_process_memory_fraction` where one was set (the caching allocator
    refuses to reserve beyond it): at most share x total - what this process already holds.
  * Never more than is free now (memory another process holds is not ours).
`network_bytes` is a per-network estimate (benchmarks/gpu_check.py measures it against the real one)
with a 2x margin on the estimated activations and parameter state.

When a stacked group still runs out of memory (the estimate is an estimate; another process grew),
the trainer calls `halve_on_oom`: the group's work is dropped, the cache emptied, the stack size
halved for that group and every later one of the trial, and the networks are trained again in the
smaller groups (rebuilt from their seeds: the same networks). `StackLimit.events` records each split
for the trial's results. A trial never fails for memory alone, unless one network by itself does not
fit, which no stack size can fix: then the OutOfMemoryError is raised, with a note saying so.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Sequence, TypeVar

import torch

CPU_PACK = 5
MAX_STACK = 256
HEADROOM = 0.6        # the share of the usable memory a stack is planned to fill
MARGIN = 2.0          # x the estimated activations + parameter state of one network
# bytes of activations + grads + params + optimiser state per network per image of the batch (estimates,
# x MARGIN applied below): LeNet-5 ~40 KB, All-CNN-C ~2.5 MB, ResNet-10 at 224 ~30 MB
BYTES_PER_IMAGE = {"lenet5": 40e3, "allcnnc": 2.5e6, "resnet10": 30e6}
PARAM_BYTES = {"lenet5": 431_080 * 4 * 4, "allcnnc": 1_369_738 * 4 * 4, "resnet10": 5_417_128 * 4 * 4}
# two-phase on cached features (imbalance_core/frozen.py): at most every MNIST training image x 500 fc1
# features x 4 bytes per network (counted for every network of the pack: an upper bound)
CACHE_BYTES = {"lenet5": 60_000 * 500 * 4}

OutOfMemoryError = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def network_bytes(model: str, batch_size: int, *, margin: float = MARGIN, cache: bool = True) -> float:
    """Estimated bytes one network of a stack needs: margin x (activations of a batch + parameters, grads,
    momentum and a spare copy), plus LeNet-5's cached phase-2 features (`cache`)."""
    return margin * (BYTES_PER_IMAGE[model] * batch_size + PARAM_BYTES[model]) + (CACHE_BYTES.get(model, 0)
                                                                                    if cache else 0)


def stack_size(model: str, batch_size: int, free_bytes: float) -> int:
    """Networks a stack holds in `free_bytes` usable bytes: HEADROOM (60%) of them over the per-network
    estimate (`network_bytes`, x2 margin), at least 1, at most MAX_STACK."""
    k = (HEADROOM * max(0.0, float(free_bytes))) // network_bytes(model, batch_size)
    return int(max(1, min(MAX_STACK, k)))


# --------------------------------------------------------------------------- the memory a trial may use

@dataclass(frozen=True)
class MemoryReport:
    """One device's memory as this process sees it (bytes), and what of it this trial may use."""
    device: str
    free: int                # the device's free memory (cudaMemGetInfo): PyTorch's cache counts as used there
    total: int
    reserved: int            # this process's caching allocator: held from the device ...
    allocated: int           # ... of which in live tensors
    fraction: float          # the share of the GPU this trial was given (Ray's `gpu` resource, <= 1)
    process_cap: float       # torch.cuda.set_per_process_memory_fraction of this process (1.0: none)

    @property
    def cached(self) -> int:
        """Reserved but not allocated: free for this process, though mem_get_info counts it as used."""
        return max(0, self.reserved - self.allocated)

    @property
    def available(self) -> int:
        """Free now, for this process: the device's free memory plus its own cache."""
        return self.free + self.cached

    @property
    def share(self) -> float:
        """What is left of this trial's share of the device: min(fraction, process cap) x total - allocated."""
        return min(self.fraction, self.process_cap) * self.total - self.allocated

    @property
    def usable(self) -> float:
        """Bytes this trial may still use: its share, but never more than is free now."""
        return float(max(0.0, min(self.available, self.share)))

    def to_dict(self) -> dict:
        return {**asdict(self), "cached": self.cached, "available": self.available, "share": self.share,
                "usable": self.usable}


def check_fraction(fraction: float) -> float:
    """The share of one GPU as a float in (0, 1]: a trial given more than one GPU stacks on one of them (1.0)."""
    f = float(fraction)
    if not f > 0 or math.isnan(f):
        raise ValueError(f"fraction={fraction!r} is not allowed: the share of the GPU must be > 0 (1.0: all of it)")
    return min(f, 1.0)


def _process_cap(device: torch.device) -> float:
    """torch.cuda.set_per_process_memory_fraction's value for `device` (1.0 where none was set or torch
    cannot say). Setting one initialises CUDA, so an uninitialised process has none."""
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)   # torch >= 2.6
    if get is None or not torch.cuda.is_initialized():
        return 1.0
    try:                                 # it refuses torch.device("cuda") (no index): the current device
        cap = float(get(device.index) if device.index is not None else get())
    except (RuntimeError, AssertionError, ValueError):
        return 1.0
    return cap if 0 < cap <= 1 else 1.0


def memory_report(device: str | torch.device = "cuda", fraction: float = 1.0) -> MemoryReport:
    """The memory of CUDA `device` as this process sees it, for a trial given `fraction` of the GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"memory_report needs a CUDA device, got {device}")
    fraction = check_fraction(fraction)
    free, total = torch.cuda.mem_get_info(device)
    return MemoryReport(str(device), int(free), int(total), int(torch.cuda.memory_reserved(device)),
                        int(torch.cuda.memory_allocated(device)), fraction, _process_cap(device))


def usable_memory(device: str | torch.device = "cuda", fraction: float = 1.0) -> float:
    """Bytes this trial may still use on CUDA `device`, given `fraction` of the GPU: (free + PyTorch's own
    cache), at most min(fraction, per-process cap) x total - what this process holds (MemoryReport.usable)."""
    return memory_report(device, fraction).usable


def release_cached_memory() -> None:
    """Give PyTorch's cached, unused GPU blocks back to the device (after collecting unreachable tensors):
    for a trial that shares the GPU, and before sizing a new stack. A no-op without CUDA."""
    if torch.cuda.is_initialized():              # the caching allocator empties every device's cache
        gc.collect()
        torch.cuda.empty_cache()


def auto_pack_size(model: str, batch_size: int, device: str | torch.device = "cpu", fraction: float = 1.0,
                   *, release_cache: bool = True) -> int:
    """Networks per pack for `model` on `device`: CPU_PACK on CPU; on CUDA the stack that fits what this
    trial may use (`usable_memory(device, fraction)`), `fraction` being the share of the GPU Ray gave the
    trial (its `gpu` resource, e.g. 0.5). release_cache: empty PyTorch's cache first (a pack's start)."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_PACK
    fraction = check_fraction(fraction)
    if release_cache:
        release_cached_memory()
    return stack_size(model, batch_size, usable_memory(device, fraction))


# --------------------------------------------------------------------------- out of memory: halve and retry

T = TypeVar("T")


@dataclass
class StackLimit:
    """How many networks a trial stacks at once: starts at `size`, halved by `halve_on_oom` each time a
    group runs out of GPU memory (for that group and every later group of the trial). `events` records
    each split: {"group": networks in the group, "retry_as": the new size, "usable": bytes usable after the
    cache was emptied, "error": the first line of the error, "at": time.time()}. `device` and `fraction`
    (the trial's share of the GPU) are only used to report `usable`."""
    size: int
    device: str | torch.device | None = None
    fraction: float = 1.0
    events: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.size = max(1, int(self.size))
        self.fraction = check_fraction(self.fraction)

    @property
    def splits(self) -> int:
        return len(self.events)


def halve_on_oom(train_group: Callable[[list], T], members: Sequence, limit: StackLimit | int, *,
                 log: Callable[[str], None] | None = None) -> Iterator[tuple[list, T]]:
    """Train `members` in consecutive groups of at most `limit.size`, yielding (group, train_group(group))
    in order as each group finishes (the moment to record and checkpoint its networks).

    When train_group raises torch.OutOfMemoryError, that group's work is dropped, unreachable tensors
    are collected and PyTorch's cache emptied, `limit.size` is halved (at least 1; recorded in
    `limit.events`) and the group's networks are trained again in groups of the new size; later groups
    use the new size too. So train_group must have no effect that counts until it returns: build the
    networks inside it (from their seeds, so that a retry trains the same networks), and record results
    only from what it returns. A single network that does not fit is re-raised (no stack size helps).
    An OutOfMemoryError raised by the caller's own code between groups is not caught here.
    """
    if not isinstance(limit, StackLimit):
        limit = StackLimit(int(limit))
    pending = list(members)
    while pending:
        group, pending = pending[:limit.size], pending[limit.size:]
        error = None
        try:
            out = train_group(list(group))
        except OutOfMemoryError as e:
            if len(group) <= 1:
                if hasattr(e, "add_note"):
                    e.add_note("packing.halve_on_oom: one network alone does not fit in the GPU memory this "
                               "trial may use; no stack size helps (a smaller batch or a larger GPU share would)")
                raise
            error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if error is None:
            yield list(group), out
            continue
        # here the exception and its traceback (the frames holding the group's tensors) are gone
        release_cached_memory()
        limit.size = max(1, len(group) // 2)
        usable = math.nan
        if limit.device is not None and torch.device(limit.device).type == "cuda":
            try:
                usable = usable_memory(limit.device, limit.fraction)
            except (RuntimeError, ValueError):
                pass
        limit.events.append({"group": len(group), "retry_as": limit.size, "usable": usable, "error": error,
                             "at": time.time()})
        if log is not None:
            log(f"out of GPU memory with {len(group)} networks stacked; retrying them {limit.size} at a time "
                f"({error})")
        pending = list(group) + pending
