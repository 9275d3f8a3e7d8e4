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
