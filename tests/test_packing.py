"""imbalance_core.packing: how many networks a pack holds."""
from imbalance_core import packing


def test_pack_sizes_follow_device_memory():
    """CPU: the five methods of a (cell, seed). CUDA: bounded by free memory (LeNet-5's cached two-phase
    features included) and by MAX_STACK; never below 1."""
    assert packing.auto_pack_size("lenet5", 64, "cpu") == packing.CPU_PACK == 5
    h200, card16, tiny = 139e9, 16e9, 1e6
    assert packing.stack_size("lenet5", 64, h200) == packing.MAX_STACK
    k16 = packing.stack_size("lenet5", 64, card16)
    assert 1 < k16 < packing.MAX_STACK
    # the cached features (120 MB per network) are what bounds LeNet-5 on a 16 GB card
    per_net = 2 * (packing.BYTES_PER_IMAGE["lenet5"] * 64 + packing.PARAM_BYTES["lenet5"]) + 120e6
    assert k16 == int(0.6 * card16 // per_net)
    assert packing.stack_size("resnet10", 256, card16) < packing.stack_size("allcnnc", 256, card16) < k16
    assert packing.stack_size("resnet10", 256, tiny) == 1
