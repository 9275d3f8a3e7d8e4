"""How many networks a pack holds, chosen from the device (measured; see benchmarks/grid_throughput.py).

CPU: a pack's networks train one after another in one process (vmap-stacking measured no faster on
these cores: K=4 stacked 1,771 vs K=1 1,733 images/s per thread, while channels_last on a single
network gave ~1.8x). A pack still pays one process start, one dataset load and one set of test batches,
and a two-phase network shares its first phase with the plain ROS/RUS network of the same seed, so
the default CPU pack is the methods of one (cell, seed): 5 networks, 3 of them fully trained.

CUDA: a pack's networks are stacked (torch.func.vmap over stacked parameters), which turns K small
networks into one set of large kernels; K is bounded by memory (a measured per-network estimate with
a 2x margin) and by MAX_STACK.
"""
from __future__ import annotations

import torch

CPU_PACK = 5
MAX_STACK = 256
# bytes of activations + grads + params + optimiser state per network per image of the batch (estimates,
# x2 margin applied below): LeNet-5 ~40 KB, All-CNN-C ~2.5 MB, ResNet-10 at 224 ~30 MB
BYTES_PER_IMAGE = {"lenet5": 40e3, "allcnnc": 2.5e6, "resnet10": 30e6}
PARAM_BYTES = {"lenet5": 431_080 * 4 * 4, "allcnnc": 1_369_738 * 4 * 4, "resnet10": 5_417_128 * 4 * 4}
# two-phase on cached features (imbalance_core/frozen.py): at most every MNIST training image x 500 fc1
# features x 4 bytes per network (counted for every network of the pack: an upper bound)
CACHE_BYTES = {"lenet5": 60_000 * 500 * 4}


def stack_size(model: str, batch_size: int, free_bytes: float) -> int:
    """Networks one GPU stacks: 60% of its free memory over the per-network estimate (x2 margin), <= MAX_STACK."""
    per_net = 2 * (BYTES_PER_IMAGE[model] * batch_size + PARAM_BYTES[model]) + CACHE_BYTES.get(model, 0)
    return int(max(1, min(MAX_STACK, (0.6 * free_bytes) // per_net)))


def auto_pack_size(model: str, batch_size: int, device: str | torch.device = "cpu") -> int:
    """Networks per pack for `model` on `device`: CPU_PACK on CPU, memory-bound on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_PACK
    free, _ = torch.cuda.mem_get_info(device)
    return stack_size(model, batch_size, free)
