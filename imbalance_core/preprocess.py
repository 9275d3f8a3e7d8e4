"""The paper's input preprocessing, per dataset, and the arrays a loader serves.

  MNIST     pixels x 1/256 (Caffe's scale 0.00390625), no augmentation
  CIFAR-10  global contrast normalisation (pylearn2 style: centre each image, scale to norm 55)
            then ZCA whitening (filter bias 0.1), fitted on the dataset's full training set before
            any imbalance is applied (the pylearn2 pipeline All-CNN used); no augmentation
  ImageNet  shorter side 256; training: random 224 crop + mirror; test: centre 224 crop;
            channels normalised by the ImageNet mean and std
"""
from __future__ import annotations

import numpy as np
import torch

from .loaders import ArrayData
from .specs import DATASETS

GCN_SCALE, ZCA_BIAS = 55.0, 0.1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def scale_256(x: torch.Tensor) -> torch.Tensor:
    return x.float() * (1.0 / 256.0)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def gcn(x: np.ndarray, scale: float = GCN_SCALE, eps: float = 1e-8) -> np.ndarray:
    """Global contrast normalisation of each row of (N, D)."""
    x = x.astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return (scale * x / np.maximum(np.sqrt((x ** 2).sum(1, keepdims=True)), eps)).astype(np.float32)


def fit_zca(x: np.ndarray, bias: float = ZCA_BIAS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix W with (x - mean) @ W white (up to `bias`)."""
    mean = x.mean(0, dtype=np.float64)
    xc = x.astype(np.float32) - mean.astype(np.float32)
    cov = (xc.T @ xc).astype(np.float64) / len(x)
    evals, evecs = np.linalg.eigh(cov)
    w = (evecs * (1.0 / np.sqrt(np.maximum(evals, 0) + bias))) @ evecs.T
    return mean.astype(np.float32), w.astype(np.float32)


def cifar_whitened(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCN + ZCA of the whole CIFAR-10 train and test arrays, ZCA fitted on the train array."""
    tr = gcn(train_x.reshape(len(train_x), -1))
    te = gcn(test_x.reshape(len(test_x), -1))
    mean, w = fit_zca(tr)
    return (((tr - mean) @ w).reshape(train_x.shape).astype(np.float32),
            ((te - mean) @ w).reshape(test_x.shape).astype(np.float32))


_LAST_WHITENED: list = []          # [(dataset, (train, test))]: the last CIFAR-10 dataset whitened


def cifar_whitened_of(dataset) -> tuple[np.ndarray, np.ndarray]:
    """`cifar_whitened` of a dataset object, computed once per process for the last dataset asked
    (the trial's arrays and both FFCV beton splits need the same whitening; ZCA is the costly part)."""
    if not (_LAST_WHITENED and _LAST_WHITENED[0][0] is dataset):
        _LAST_WHITENED[:] = [(dataset, cifar_whitened(dataset.train_x, dataset.test_x))]
    return _LAST_WHITENED[0][1]


def array_data(dataset) -> tuple[ArrayData, ArrayData]:
    """(train, test) ArrayData on the CPU for an in-memory dataset, preprocessed as the paper."""
    ytr, yte = torch.from_numpy(dataset.train_y.astype(np.int64)), torch.from_numpy(dataset.test_y.astype(np.int64))
    kind = DATASETS[dataset.name].preprocess
    if kind == "scale256":
        return (ArrayData(torch.from_numpy(dataset.train_x), ytr, scale_256),
                ArrayData(torch.from_numpy(dataset.test_x), yte, scale_256))
    if kind == "gcn-zca":
        tr, te = cifar_whitened_of(dataset)
        return ArrayData(torch.from_numpy(tr), ytr, identity), ArrayData(torch.from_numpy(te), yte, identity)
    raise ValueError(f"no array preprocessing for dataset {dataset.name!r} (preprocess {kind!r})")


def imagenet_transforms(train: bool):
    from torchvision import transforms as T
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(256), T.CenterCrop(224), *norm])


class ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset over image files (PIL decode), for the torch backend."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = list(files), np.asarray(labels), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])
