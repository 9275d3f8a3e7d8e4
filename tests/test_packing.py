"""imbalance_core.packing: how many networks a pack holds.

The memory model is checked against the real models (parameter counts, LeNet-5's cached feature size,
measured here on the real modules), and a pack size against its contract: the largest stack whose
estimated need fits 60% of the free memory, at most MAX_STACK, at least 1."""
import numpy as np
import pytest
import torch

from imbalance_core import frozen, packing
from imbalance_core.loaders import ArrayData
from imbalance_core.models import MODELS

MNIST_TRAIN_IMAGES = 60_000


def _param_count(model: str) -> int:
    classes = 1000 if model == "resnet10" else 10
    return sum(p.numel() for p in MODELS[model](num_classes=classes).parameters())


def _cached_feature_bytes_per_image() -> int:
    """Bytes of LeNet-5's cached phase-2 features per training image, measured with frozen.features."""
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    f = frozen.features(MODELS["lenet5"](), ArrayData(x, torch.zeros(3, dtype=torch.int64), lambda t: t.float() / 256))
    assert f.shape[0] == 3
    return f[0].numel() * f.element_size()


def _need(model: str, batch: int) -> float:
    """Per-network bytes from the real parameter count (params, grads, momentum, a spare copy: 4 x 4 bytes)
    and, for LeNet-5, the real cached features of every MNIST training image; activations x2 margin."""
    cache = _cached_feature_bytes_per_image() * MNIST_TRAIN_IMAGES if model == "lenet5" else 0
    return 2 * (packing.BYTES_PER_IMAGE[model] * batch + _param_count(model) * 4 * 4) + cache


@pytest.mark.parametrize("model", ["lenet5", "allcnnc", "resnet10"])
def test_memory_model_matches_the_real_networks(model):
    assert packing.PARAM_BYTES[model] == _param_count(model) * 4 * 4
    if model == "lenet5":       # every cached feature of the largest training set is counted
        assert packing.CACHE_BYTES["lenet5"] >= _cached_feature_bytes_per_image() * MNIST_TRAIN_IMAGES


@pytest.mark.parametrize("model,batch", [("lenet5", 64), ("allcnnc", 256), ("resnet10", 256)])
@pytest.mark.parametrize("gigabytes", [16, 24, 40, 80])
def test_stack_is_the_largest_that_fits_60_percent(model, batch, gigabytes):
    free = gigabytes * 1e9
    k = packing.stack_size(model, batch, free)
    need = _need(model, batch)
    assert 1 <= k <= packing.MAX_STACK
    if k > 1:
        assert k * need <= 0.6 * free                               # the stack fits ...
    if k < packing.MAX_STACK:
        assert (k + 1) * need > 0.6 * free                          # ... and one more would not


def test_pack_sizes_follow_device_memory():
    """CPU: the five methods of a (cell, seed). CUDA: bounded by free memory and MAX_STACK; never below 1."""
    assert packing.auto_pack_size("lenet5", 64, "cpu") == packing.CPU_PACK == 5
    h200, card16, tiny = 139e9, 16e9, 1e6
    assert packing.stack_size("lenet5", 64, h200) == packing.MAX_STACK
    k16 = packing.stack_size("lenet5", 64, card16)
    assert 1 < k16 < packing.MAX_STACK
    # on a 16 GB card LeNet-5's cached features (120 MB per network) are what bounds the stack: without
    # them it would be MAX_STACK
    without_cache = 2 * (packing.BYTES_PER_IMAGE["lenet5"] * 64 + _param_count("lenet5") * 16)
    assert 0.6 * card16 // without_cache > packing.MAX_STACK
    assert packing.stack_size("resnet10", 256, card16) < packing.stack_size("allcnnc", 256, card16) < k16
    assert packing.stack_size("resnet10", 256, tiny) == 1
    # more free memory never means a smaller stack
    sizes = [packing.stack_size("allcnnc", 256, g * 1e9) for g in np.linspace(1, 200, 40)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] > 50


# --------------------------------------------------------------------------- the memory a trial may use
# A fake GPU: torch.cuda's memory queries answer from a small model of one device shared by processes.
# `this` process holds `allocated` bytes in tensors and `reserved` bytes from the device (its cache is the
# difference); `others` is what other processes (other trials, CUDA contexts) hold. empty_cache gives this
# process's cache back to the device, as the caching allocator does.

GB = 1e9


class FakeGPU:
    def __init__(self, total=80 * GB, reserved=0.0, allocated=0.0, others=0.0, cap=None):
        self.total, self.reserved, self.allocated, self.others, self.cap = total, reserved, allocated, others, cap
        self.emptied = 0

    def mem_get_info(self, device=None):
        return int(self.total - self.others - self.reserved), int(self.total)

    def empty_cache(self):
        self.emptied += 1
        self.reserved = self.allocated


@pytest.fixture
def fake_gpu(monkeypatch):
    gpu = FakeGPU()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: gpu.mem_get_info(device))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(gpu.reserved))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(gpu.allocated))
    monkeypatch.setattr(torch.cuda, "empty_cache", gpu.empty_cache)
    # a process that set a per-process memory fraction has initialised CUDA
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    def get_fraction(device=None):
        if device is not None:                       # as torch: refuses a torch.device without an index
            from torch.cuda._utils import _get_device_index
            _get_device_index(device)
        return 1.0 if gpu.cap is None else gpu.cap
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", get_fraction)
    return gpu


@pytest.fixture
def no_gc(monkeypatch):
    """gc.collect() before emptying the cache frees nothing under the fake GPU (no real CUDA tensors) and costs
    ~0.6 s in a long test process: skipped where a test only sizes stacks."""
    monkeypatch.setattr(packing.gc, "collect", lambda *a: 0)


def test_the_cache_of_a_previous_pack_counts_as_free(fake_gpu, no_gc):
    """Tune reuses a trial's actor: the pack before left 50 GB in PyTorch's cache, which mem_get_info reports
    as used. The next pack stacks as many networks as the first did (before: as many as 29.5 GB hold)."""
    fresh = packing.auto_pack_size("allcnnc", 256, "cuda")
    fake_gpu.emptied = 0
    fake_gpu.reserved, fake_gpu.allocated, fake_gpu.others = 50 * GB, 0.2 * GB, 0.5 * GB   # left by pack 1
    free, total = torch.cuda.mem_get_info()
    assert free == pytest.approx(29.5 * GB)
    report = packing.memory_report("cuda")
    assert report.cached == pytest.approx(49.8 * GB) and report.usable == pytest.approx(79.3 * GB)
    assert packing.stack_size("allcnnc", 256, free) < 0.4 * fresh                  # what mem_get_info alone gave
    # measured without emptying the cache: the cache is counted as free
    k = packing.auto_pack_size("allcnnc", 256, "cuda", release_cache=False)
    assert k == packing.stack_size("allcnnc", 256, 79.3 * GB) and fake_gpu.emptied == 0
    # auto_pack_size empties it first (for a trial sharing the GPU), and then sees the same memory
    assert packing.auto_pack_size("allcnnc", 256, "cuda") == k and fake_gpu.emptied == 1
    assert fake_gpu.reserved == fake_gpu.allocated
    assert k >= fresh - 1                                                              # 0.2 GB still in tensors


@pytest.mark.parametrize("model,batch", [("lenet5", 64), ("allcnnc", 256), ("resnet10", 256)])
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_the_stack_fits_the_share_of_the_gpu_ray_gave_the_trial(fake_gpu, no_gc, model, batch, fraction):
    """--gpus-per-trial 0.5 / 0.25: a trial sizes its stack on its share of the GPU, not on all of it."""
    fake_gpu.total, fake_gpu.allocated, fake_gpu.reserved = 140 * GB, 1 * GB, 3 * GB
    k = packing.auto_pack_size(model, batch, "cuda", fraction)
    share = fraction * 140 * GB - 1 * GB
    assert k == packing.stack_size(model, batch, share)
    assert packing.usable_memory("cuda", fraction) == pytest.approx(share)
    if k > 1:
        assert 1 * GB + k * packing.network_bytes(model, batch) <= fraction * 140 * GB   # inside its share
    whole = packing.auto_pack_size(model, batch, "cuda", 1.0)
    assert k <= whole and (k == packing.MAX_STACK or fraction == 1.0 or k < whole)


def test_trials_sharing_a_gpu_fit_together(fake_gpu, no_gc):
    """Four trials of 0.25 GPU, started one after another: each plans within its share, and together
    (at the stacks they planned) they fit the device; a trial never plans more than is free now."""
    fake_gpu.total = 80 * GB
    used = 0.0
    for _ in range(4):
        fake_gpu.others = used                       # the trials started before, at their planned stacks
        k = packing.auto_pack_size("allcnnc", 256, "cuda", 0.25)
        assert k > 1
        used += 0.5 * GB + k * packing.network_bytes("allcnnc", 256)      # its CUDA context + its stack
    assert used <= 80 * GB
    # another process holds all but 5 GB: the share (20 GB) is not there to take
    fake_gpu.others = 75 * GB
    assert packing.usable_memory("cuda", 0.25) == pytest.approx(5 * GB)


def test_a_per_process_memory_fraction_bounds_the_stack(fake_gpu):
    """torch.cuda.set_per_process_memory_fraction (the gpu check's 24 GB stand-in for an A10G) caps what the
    caching allocator may reserve: the stack is sized on it, and on the smaller of it and Ray's share."""
    fake_gpu.total, fake_gpu.allocated = 140 * GB, 2 * GB
    fake_gpu.cap = 24 * GB / (140 * GB)
    assert packing.usable_memory("cuda") == pytest.approx(22 * GB)
    assert packing.auto_pack_size("allcnnc", 256, "cuda") == packing.stack_size("allcnnc", 256, 22 * GB)
    assert packing.usable_memory("cuda", 0.1) == pytest.approx(12 * GB)
    assert packing.usable_memory("cuda:0") == pytest.approx(22 * GB)
    fake_gpu.cap = None
    assert packing.usable_memory("cuda") == pytest.approx(138 * GB)


def test_fraction_must_be_a_share():
    for bad in (0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            packing.check_fraction(bad)
    assert packing.check_fraction(2) == 1.0 and packing.check_fraction(0.25) == 0.25
    assert packing.auto_pack_size("lenet5", 64, "cpu", 0.5) == packing.CPU_PACK
    with pytest.raises(ValueError, match="CUDA"):
        packing.memory_report("cpu")


# --------------------------------------------------------------------------- out of memory: halve and retry

def _oom(n):
    return packing.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} GiB\nmore text")


def test_a_group_out_of_memory_is_halved_and_retried(fake_gpu):
    """A group of 8 does not fit, one of 4 does: every network is trained once in the end, in order; later
    groups use the halved size; the splits are recorded; the failed group's tensors are gone (collected,
    cache emptied) before its retry starts."""
    import weakref
    calls, failed = [], []

    class Activations:                                       # stands for a group's GPU tensors
        pass

    def train_group(group):
        assert all(ref() is None for ref in failed), "a failed group's tensors were still alive at its retry"
        calls.append(list(group))
        acts = Activations()
        acts.cycle = acts                                    # a reference cycle: only the collector frees it
        if len(group) > 4:
            failed.append(weakref.ref(acts))
            raise _oom(len(group))
        return [f"net{i}" for i in group]

    limit = packing.StackLimit(8, "cuda", fraction=0.5)
    got = list(packing.halve_on_oom(train_group, list(range(11)), limit))
    assert [g for g, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [o for _, o in got] == [[f"net{i}" for i in g] for g, _ in got]
    assert calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert limit.size == 4 and limit.splits == 1 and fake_gpu.emptied == 1
    (e,) = limit.events
    assert e["group"] == 8 and e["retry_as"] == 4 and e["error"] == "CUDA out of memory. Tried to allocate 8 GiB"
    assert e["usable"] == pytest.approx(40 * GB)


def test_halving_goes_down_to_one_network_and_no_further():
    fits = 3
    seen = []

    def train_group(group):
        seen.append(len(group))
        if len(group) > fits:
            raise _oom(len(group))
        return len(group)

    limit = packing.StackLimit(16)
    assert sum(n for _, n in packing.halve_on_oom(train_group, range(13), limit)) == 13
    assert seen == [13, 6, 3, 3, 3, 3, 1] and limit.size == 3
    assert [e["retry_as"] for e in limit.events] == [6, 3]

    def never_fits(group):
        raise _oom(1)

    with pytest.raises(packing.OutOfMemoryError) as info:
        list(packing.halve_on_oom(never_fits, range(4), packing.StackLimit(4)))
    assert "one network alone does not fit" in "".join(getattr(info.value, "__notes__", []))


def test_other_errors_are_not_retried():
    calls = []

    def train_group(group):
        calls.append(group)
        raise FloatingPointError("training diverged")

    with pytest.raises(FloatingPointError):
        list(packing.halve_on_oom(train_group, range(8), 8))
    assert len(calls) == 1
