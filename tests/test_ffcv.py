"""Tests for imbalance_core.ffcv_data: beton cache, plan sampling through FFCV, pipelines, bad input."""
import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ffcv  # noqa: E402,F401  (required: a broken install fails here instead of skipping)

# numba sometimes reports a KeyError from a Dispatcher finaliser when FFCV's per-Loader jitted functions are
# garbage collected; it is printed as "Exception ignored" and has no effect on results.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

from imbalance_core import datasets as D  # noqa: E402
from imbalance_core import ffcv_data as F  # noqa: E402
from imbalance_core.imbalance import make_subset  # noqa: E402
from imbalance_core.loaders import ArrayData, InMemoryDataset, TensorLoader, TorchLoader  # noqa: E402
from imbalance_core.preprocess import ImageFiles, array_data, imagenet_transforms  # noqa: E402
from imbalance_core.sampling import SamplingPlan  # noqa: E402


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ffcv-cache")


@pytest.fixture(scope="module")
def mnist(shared_data):
    return D.load_dataset("mnist", shared_data)


@pytest.fixture(scope="module")
def mnist_train(mnist):
    return array_data(mnist)[0]


def tiny_array(mnist, n=300, offset=0) -> D.ArrayDataset:
    """A small MNIST-named dataset (fast to write) for the cache tests."""
    s = slice(offset, offset + n)
    return D.ArrayDataset("mnist", mnist.train_x[s], mnist.train_y[s], mnist.test_x[:50], mnist.test_y[:50],
                          10, mnist.class_names)


def tiny_imagenet(shared_data, per_class_train=2, per_class_val=1) -> D.FileDataset:
    """A few real Imagenette files per class, through the real reader."""
    full = D.read_imagenet(shared_data / "imagenette")

    def pick(files, y, k):
        keep = np.concatenate([np.flatnonzero(y == c)[:k] for c in range(full.num_classes)])
        return tuple(files[i] for i in keep), y[keep]
    trf, try_ = pick(full.train_files, full.train_y, per_class_train)
    tef, tey = pick(full.test_files, full.test_y, per_class_val)
    return D.FileDataset("imagenet", trf, try_, tef, tey, full.num_classes, full.class_names)


def sampler_plans(labels, subset, seed=0):
    rho = max(subset.counts) / min(subset.counts)
    return [
        SamplingPlan(subset, labels, "baseline", seed=seed),
        SamplingPlan(subset, labels, "ros", seed=seed),
        SamplingPlan(subset, labels, "rus", seed=seed),
        SamplingPlan(subset, labels, "partial-ros", level=min(10.0, rho), seed=seed),
        SamplingPlan(subset, labels, "partial-rus", level=min(100.0, rho), seed=seed),
        SamplingPlan(subset, labels, "weighted", class_weights=tuple(1.0 / c for c in subset.counts), seed=seed),
    ]


# --------------------------------------------------------------------------- sampling through FFCV

def test_batches_equal_tensor_loader(mnist, mnist_train, cache):
    """Same plans -> the very same batches from the FFCV, tensor and torch backends, across epoch and chunk
    boundaries."""
    sub = make_subset(mnist.train_y, "mnist", "step", 5000, 10, 0.5, seed=3)
    plans = [SamplingPlan(sub, mnist.train_y, s, seed=3, stream_id=1) for s in ("ros", "rus")]
    plans.append(SamplingPlan(sub, mnist.train_y, "weighted", class_weights=(1.0,) * 10, seed=4))
    B, iters = 64, 180                                    # rus epoch = 5000 < 180 * 64
    loader = F.train_loader(mnist, plans, B, iters, "cpu", cache_dir=cache, chunk_samples=3 * B * 50,
                            num_workers=1)
    assert len(loader) == iters and loader.chunk == 50
    torch_loader = TorchLoader(InMemoryDataset(mnist_train.x, mnist_train.y), plans, B, iters, "cpu",
                               to_input=mnist_train.to_input)
    streams = [p.stream() for p in plans]
    n = 0
    for (x, y), (x2, y2), (x3, y3) in zip(loader, TensorLoader(mnist_train, plans, B, iters), torch_loader,
                                          strict=True):
        assert x.shape == (3, B, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (3, B) and y.dtype == torch.int64
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(x, x3) and torch.equal(y, y3)
        # and they are the plans' draws, in order: image i of plan k's stream, scaled by 1/256
        idx = np.stack([s.take(B) for s in streams])
        assert torch.equal(y, torch.from_numpy(mnist.train_y[idx].astype(np.int64)))
        assert torch.equal(x, torch.from_numpy(mnist.train_x[idx]).float() / 256)
        n += 1
    assert n == iters


@pytest.mark.parametrize("start", [1, 50, 77])        # a chunk's first batch, a chunk edge, mid-chunk and epoch
def test_a_resumed_loader_yields_the_rest_of_the_batches(mnist, mnist_train, cache, start):
    """A phase resumed at iteration `start` (checkpoints inside a phase): the FFCV, tensor and torch loaders
    started there yield exactly the batches start..iterations-1 of the loader started at 0."""
    sub = make_subset(mnist.train_y, "mnist", "step", 5000, 10, 0.5, seed=3)
    plans = [SamplingPlan(sub, mnist.train_y, s, seed=3, stream_id=1) for s in ("ros", "rus")]
    B, iters = 64, 100                                    # rus epoch = 5000 < 100 * 64
    whole = list(TensorLoader(mnist_train, plans, B, iters))
    loaders = [F.train_loader(mnist, plans, B, iters, "cpu", cache_dir=cache, chunk_samples=2 * B * 50,
                              num_workers=1, start=start),
               TensorLoader(mnist_train, plans, B, iters, start=start),
               TorchLoader(InMemoryDataset(mnist_train.x, mnist_train.y), plans, B, iters, "cpu",
                           to_input=mnist_train.to_input, start=start)]
    for loader in loaders:
        assert len(loader) == iters - start
        rest = list(loader)
        assert len(rest) == iters - start
        assert all(torch.equal(x, wx) and torch.equal(y, wy) for (x, y), (wx, wy) in zip(rest, whole[start:]))
    with pytest.raises(ValueError, match="start=100 must be in 0..99"):
        F.train_loader(mnist, plans, B, iters, "cpu", cache_dir=cache, num_workers=1, start=iters)


def test_two_loaders_at_once_and_reuse(mnist, mnist_train, cache):
    """Built Loaders are pooled; a loader iterated while another of the same shape runs gets its own."""
    sub = make_subset(mnist.train_y, "mnist", "step", 5000, 10, 0.5, seed=5)
    pa, pb = ([SamplingPlan(sub, mnist.train_y, "ros", seed=s)] for s in (5, 6))
    a, b = (F.train_loader(mnist, p, 32, 40, "cpu", cache_dir=cache, num_workers=1) for p in (pa, pb))
    for (xa, ya), (xb, yb), (ra, _), (rb, _) in zip(a, b, TensorLoader(mnist_train, pa, 32, 40),
                                                    TensorLoader(mnist_train, pb, 32, 40), strict=True):
        assert torch.equal(xa, ra) and torch.equal(xb, rb)
    key = next(k for k in F._POOL if k[0] == "train" and k[2] == 32)
    assert len(F._POOL[key]) == 2 and not any(e.busy for e in F._POOL[key])
    assert sum(1 for _ in a) == 40 and len(F._POOL[key]) == 2          # re-iterating reuses a built one


@pytest.mark.parametrize("rho", [10, 5000])
def test_class_frequencies_match_plan(mnist, cache, rho):
    """Over one epoch each plan delivers plan.counts per class (weighted: within 5 sigma)."""
    labels = mnist.train_y
    sub = make_subset(labels, "mnist", "step", 5000, rho, 0.5, seed=1)
    plans = sampler_plans(labels, sub, seed=1)
    B = 500
    iters = max(math.ceil(p.epoch_size / B) for p in plans)
    ys = [[] for _ in plans]
    minority = [c for c in range(10) if sub.counts[c] == min(sub.counts)]
    ros_minority_images = []
    for x, y in F.train_loader(mnist, plans, B, iters, "cpu", cache_dir=cache, num_workers=1):
        for k in range(len(plans)):
            ys[k].append(y[k].numpy())
        if rho == 5000:   # plan 1 is ROS: every minority image is the one example of its class, replicated
            m = np.isin(y[1].numpy(), minority)
            ros_minority_images.append((x[1][m], y[1][m]))
    for plan, got in zip(plans, ys):
        got = np.concatenate(got)[:plan.epoch_size]
        counts = np.bincount(got, minlength=10)
        if plan.sampler == "weighted":
            w = np.asarray(plan.class_weights) * np.asarray(sub.counts)
            p = w / w.sum()
            expect = plan.epoch_size * p
            sigma = np.sqrt(plan.epoch_size * p * (1 - p))
            assert np.all(np.abs(counts - expect) <= 5 * sigma + 1), (counts, expect)
        else:
            assert counts.tolist() == plan.counts, (plan.sampler, counts.tolist(), plan.counts)
    if rho == 5000:
        assert min(sub.counts) == 1 and plans[1].counts == [5000] * 10
        for c in minority:
            (only,) = sub.indices[labels[sub.indices] == c]
            want = torch.from_numpy(mnist.train_x[only]).float() / 256
            imgs = torch.cat([xm[ym == c] for xm, ym in ros_minority_images])
            assert len(imgs) >= 5000 and torch.equal(imgs[:5000], want.expand(5000, 1, 28, 28))


def test_plans_must_index_the_written_training_set(mnist, cache):
    small = tiny_array(mnist)
    sub = make_subset(mnist.train_y, "mnist", "balanced", 10, 1, 0.5, seed=0)
    with pytest.raises(ValueError, match="holds 300"):
        F.train_loader(small, [SamplingPlan(sub, mnist.train_y)], 4, 2, "cpu", cache_dir=cache, num_workers=1)


# --------------------------------------------------------------------------- pipelines

def test_cifar_shapes_and_values(shared_data, tmp_path, monkeypatch):
    """The cifar10 beton holds exactly preprocess.cifar_whitened's arrays, served as (K, B, 3, 32, 32);
    the whitening is computed once per process for the beton and the trial's arrays together.

    ZCA's 3072x3072 eigendecomposition takes minutes on a loaded 2-core runner, so here a cheap stand-in
    (GCN only) replaces it; the writer and loader are what is tested, whitening is preprocess's.
    """
    from imbalance_core import preprocess
    ds = D.load_dataset("cifar10", shared_data / "cifar10")
    calls = []

    def cheap(train_x, test_x):
        calls.append(len(train_x))
        return (preprocess.gcn(train_x.reshape(len(train_x), -1)).reshape(train_x.shape),
                preprocess.gcn(test_x.reshape(len(test_x), -1)).reshape(test_x.shape))
    monkeypatch.setattr(preprocess, "cifar_whitened", cheap)
    monkeypatch.setattr(preprocess, "_LAST_WHITENED", [])
    tr_x, te_x = cheap(ds.train_x, ds.test_x)                    # the reference arrays
    calls.clear()
    tr = ArrayData(torch.from_numpy(tr_x), torch.from_numpy(ds.train_y), lambda t: t)
    sub = make_subset(ds.train_y, "cifar10", "step", 500, 10, 0.5, seed=0)
    plans = [SamplingPlan(sub, ds.train_y, "ros", seed=s) for s in (0, 1)]
    n = 0
    for (x, y), (x2, y2) in zip(F.train_loader(ds, plans, 8, 3, "cpu", cache_dir=tmp_path, num_workers=1),
                                TensorLoader(tr, plans, 8, 3), strict=True):
        assert x.shape == (2, 8, 3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, x2) and torch.equal(y, y2)
        n += 1
    assert n == 3
    train_arrays, _ = preprocess.array_data(ds)                  # what a trial's tensor loader serves
    assert torch.equal(train_arrays.x, tr.x)
    assert calls == [len(ds.train_x)]                            # one whitening for all of it


def _check_imagenet_test_batches(ds, cache_dir):
    """Test split: centre 224 crop of the shorter-side-256 image, as torchvision does, image by image
    (up to FFCV's JPEG q90 re-encode), in the split's order."""
    test = list(F.test_batches(ds, "cpu", batch_size=4, cache_dir=cache_dir, num_workers=1))
    xt, yt = torch.cat([b[0] for b in test]), torch.cat([b[1] for b in test])
    assert xt.shape == (len(ds.test_files), 3, 224, 224) and yt.tolist() == ds.test_y.tolist()
    ref = ImageFiles(ds.test_files, ds.test_y, imagenet_transforms(train=False))
    refs = torch.stack([ref[i][0] for i in range(len(ref))])
    err = (xt[:, None] - refs[None]).abs().mean(dim=(2, 3, 4))          # (served, reference)
    own = err.diagonal()
    assert own.max() < 0.1, own                                         # ~0.03 measured: JPEG re-encode only
    assert torch.equal(err.argmin(1), torch.arange(len(ref)))           # each is its own image, no other's
    assert (err + 10 * torch.eye(len(ref))).min() > 5 * own.max()


def _decoded_256(path) -> np.ndarray:
    """The image as the paper's pipeline sees it before cropping: RGB, shorter side 256, (3, H, W) in 0..255."""
    from PIL import Image
    from torchvision.transforms import functional as TF
    with Image.open(path) as im:
        return np.asarray(TF.resize(im.convert("RGB"), 256), dtype=np.float64).transpose(2, 0, 1)


def _best_window_rms(image: np.ndarray, crop: np.ndarray) -> float:
    """The smallest RMS difference (0..255 scale) between `crop` (3, h, w) and any h x w window of `image`
    (3, H, W), mirrored or not: sum of squared differences at every offset, the cross term by FFT."""
    (_, H, W), (_, h, w) = image.shape, crop.shape
    ii = np.pad((image ** 2).sum(0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))        # integral image of image^2
    win_sq = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]               # (H-h+1, W-w+1)
    fi = np.fft.rfft2(image)
    best = np.inf
    for c in (crop, crop[:, :, ::-1]):
        corr = np.fft.irfft2(fi * np.conj(np.fft.rfft2(c, s=(H, W))), s=(H, W)).sum(0)[:H - h + 1, :W - w + 1]
        best = min(best, float((win_sq - 2 * corr + (c ** 2).sum()).min()))
    return (max(best, 0.0) / crop.size) ** 0.5


def _check_train_batches_follow_plans(ds, plans, batches, B, tol_rms):
    """Batch t of plan k holds the images of plan k's stream positions t*B .. t*B+B-1, with their labels:
    each served image is a 224 crop (mirrored or not) of that file, not of the other images drawn."""
    mean = np.asarray(F.IMAGENET_MEAN).reshape(3, 1, 1)
    std = np.asarray(F.IMAGENET_STD).reshape(3, 1, 1)
    streams = [p.stream() for p in plans]
    images = {}
    for x, y in batches:
        idx = np.stack([s.take(B) for s in streams])
        assert y.tolist() == ds.train_y[idx].tolist()                  # the plan's labels, in the plan's order
        for k in range(len(plans)):
            for b in range(B):
                crop = (x[k, b].double().numpy() * std + mean) * 255
                i = int(idx[k, b])
                if i not in images:
                    images[i] = _decoded_256(ds.train_files[i])
                rms = _best_window_rms(images[i], crop)
                assert rms < tol_rms, (k, b, ds.train_files[i], rms)
                other = next(j for j in idx.ravel() if ds.train_files[j] != ds.train_files[i])
                if int(other) not in images:
                    images[int(other)] = _decoded_256(ds.train_files[other])
                assert _best_window_rms(images[int(other)], crop) > 3 * tol_rms


@pytest.mark.slow
def test_imagenet_shapes_and_values(shared_data, tmp_path):
    ds = tiny_imagenet(shared_data)
    sub = make_subset(ds.train_y, "imagenet", "step", 2, 2, 0.5, seed=0)
    plans = [SamplingPlan(sub, ds.train_y, s, seed=0) for s in ("ros", "baseline")]
    batches = list(F.train_loader(ds, plans, 4, 3, "cpu", cache_dir=tmp_path, num_workers=1))
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (2, 4, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (2, 4)
        assert torch.isfinite(x).all() and -3 < x.mean() < 3
    # FFCV: JPEG q90 re-encode, measured RMS <= 3.3 to its own file, >= 58 to any other
    _check_train_batches_follow_plans(ds, plans, batches, 4, tol_rms=6.0)
    _check_imagenet_test_batches(ds, tmp_path)


def test_imagenet_torch_backend_follows_plans(shared_data):
    """The torch backend (PIL + torchvision, trial.py's loader='torch' for ImageNet) serves the same plan
    positions: the plan's labels in order, each image a random 224 crop of its planned file."""
    ds = tiny_imagenet(shared_data)
    sub = make_subset(ds.train_y, "imagenet", "step", 2, 2, 0.5, seed=1)
    plans = [SamplingPlan(sub, ds.train_y, s, seed=1) for s in ("ros", "rus")]
    loader = TorchLoader(ImageFiles(ds.train_files, ds.train_y, imagenet_transforms(train=True)), plans, 3, 2, "cpu")
    batches = list(loader)
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 3, 224, 224)
    _check_train_batches_follow_plans(ds, plans, batches, 3, tol_rms=0.5)        # exact: measured RMS ~1e-5


# --------------------------------------------------------------------------- cache

def _files(d: Path):
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock"))


def test_cache_reuse_and_rewrite(mnist, tmp_path, monkeypatch):
    ds = tiny_array(mnist)
    first = F.ensure_beton(ds, "train", tmp_path)
    p = first.path
    assert first.written
    side = p.with_name(p.name + ".json")
    meta = json.loads(side.read_text())
    assert meta["num_samples"] == 300 and meta["data_digest"] == D.digest(ds) == meta["manifest"]
    assert set(meta) == {"key", "settings", "num_samples", "manifest", "data_digest"}   # the same from any writer
    assert _files(tmp_path) == sorted([p.name, side.name])           # no temporary files left
    inode = p.stat().st_ino
    again = F.ensure_beton(ds, "train", tmp_path)
    assert again.path == p and not again.written and p.stat().st_ino == inode   # reused
    assert F.write_beton(ds, "train", tmp_path) == p and p.stat().st_ino == inode
    size = p.stat().st_size

    def assert_rewritten(why):
        assert why in F.check_beton(p, meta["key"], meta["settings"], 300)
        b = F.ensure_beton(ds, "train", tmp_path)
        assert b.path == p and b.written and p.stat().st_size == size
        assert F.check_beton(p, meta["key"], meta["settings"], 300) is None
        assert _files(tmp_path) == sorted([p.name, side.name])

    with open(p, "r+b") as f:                                         # truncated in the data
        f.truncate(size // 2)
    assert_rewritten("allocation table at")
    with open(p, "r+b") as f:                                         # the last allocation cut short
        f.truncate(size - 5)
    assert_rewritten("cut short")
    with open(p, "r+b") as f:                                         # the last allocation missing
        f.truncate(size - 24)
    assert_rewritten("299 allocations for 300 samples")
    side.unlink()                                                      # truncated, no sidecar
    with open(p, "r+b") as f:
        f.truncate(100)
    assert_rewritten("no valid sidecar")
    side.write_text("{not json")                                       # garbage sidecar, garbage beton
    p.write_bytes(b"\0" * 4096)
    assert_rewritten("no valid sidecar")
    # a sidecar written with other settings: the sidecar is rewritten, the whole beton kept
    side.write_text(json.dumps(dict(meta, settings=dict(meta["settings"], format=-1))))
    inode = p.stat().st_ino
    assert "other settings" in F.check_beton(p, meta["key"], meta["settings"], 300)
    assert F.write_beton(ds, "train", tmp_path) == p and p.stat().st_ino == inode
    assert json.loads(side.read_text()) == meta
    plan = SamplingPlan(make_subset(ds.train_y, "mnist", "balanced", 20, 1, 0.5, seed=0), ds.train_y)
    (x, y), = F.train_loader(ds, [plan], 200, 1, "cpu", cache_dir=tmp_path, num_workers=1)   # FFCV reads it
    assert torch.equal(x[0] * 256, torch.from_numpy(ds.train_x[plan.epoch(0)]).float())
    assert torch.equal(y[0], torch.from_numpy(ds.train_y[plan.epoch(0)]))
    # different content or split -> different file
    assert F.write_beton(tiny_array(mnist, offset=1), "train", tmp_path) != p
    # the cache folder: IMBALANCE_FFCV_CACHE, else IMBALANCE_CACHE, else ~/.cache/imbalance_core/ffcv
    monkeypatch.delenv("IMBALANCE_FFCV_CACHE", raising=False)
    monkeypatch.setenv("IMBALANCE_CACHE", str(tmp_path / "env"))
    assert F.write_beton(ds, "test", None).parent == tmp_path / "env"
    monkeypatch.setenv("IMBALANCE_FFCV_CACHE", str(tmp_path / "shared" / "ffcv"))
    assert F.default_cache_dir() == tmp_path / "shared" / "ffcv"
    assert F.write_beton(ds, "test", None).parent == tmp_path / "shared" / "ffcv"


def test_verify_rewrites_a_beton_of_changed_data(mnist, tmp_path, monkeypatch):
    """IMBALANCE_FFCV_VERIFY=1: the writer's recorded datasets.digest is checked too; other data under the
    same manifest (a file changed in place, here a stand-in digest) is rewritten."""
    ds = tiny_array(mnist)
    p = F.write_beton(ds, "train", tmp_path)
    inode = p.stat().st_ino
    monkeypatch.setattr(D, "digest", lambda d: "another digest")
    assert not F.ensure_beton(ds, "train", tmp_path).written and p.stat().st_ino == inode   # not checked
    monkeypatch.setenv("IMBALANCE_FFCV_VERIFY", "1")
    assert F.ensure_beton(ds, "train", tmp_path).written and p.stat().st_ino != inode
    assert json.loads(p.with_name(p.name + ".json").read_text())["data_digest"] == "another digest"
    assert not F.ensure_beton(ds, "train", tmp_path).written


def test_the_key_is_the_manifest_not_the_folder(shared_data, tmp_path, monkeypatch):
    """An image folder's beton is keyed by the split's manifest (class folder/file name, label), so a node
    that mounts the data elsewhere finds the same beton, and finding it stats none of the data's files."""
    a = D.load_dataset("imagenet", _imagenet_copy(shared_data, tmp_path / "node-a" / "inet"))
    b = D.load_dataset("imagenet", _imagenet_copy(shared_data, tmp_path / "node-b" / "data" / "inet"))
    stats = []
    real_stat = os.stat

    def counting(p, *args, **kw):
        if str(os.fspath(p)).startswith(str(tmp_path)):
            stats.append(os.fspath(p))
        return real_stat(p, *args, **kw)
    monkeypatch.setattr(os, "stat", counting)
    for split in F.SPLITS:
        assert F.beton_path(a, split, tmp_path / "cache")[:2] == F.beton_path(b, split, tmp_path / "cache")[:2]
    assert stats == []
    monkeypatch.setattr(os, "stat", real_stat)
    relabelled = D.FileDataset("imagenet", a.train_files, a.train_y[::-1].copy(), a.test_files, a.test_y,
                               a.num_classes, a.class_names)
    fewer = D.FileDataset("imagenet", a.train_files[1:], a.train_y[1:], a.test_files, a.test_y, a.num_classes,
                          a.class_names)
    keys = {F.beton_path(d, "train")[1] for d in (a, relabelled, fewer)}
    assert len(keys) == 3
    assert F.beton_path(fewer, "test")[1] == F.beton_path(a, "test")[1]     # the test split is unchanged


# Two processes of their own ("nodes"), pointed at one cache folder: what each did, as JSON on its last line.
_NODE = r'''
import contextlib, glob, json, os, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["repo"])
from imbalance_core import datasets as D
from imbalance_core import ffcv_data as F

def barrier(name):                       # wait until both processes are here
    open(f"{name}.{os.getpid()}", "w").close()
    deadline = time.time() + 120
    while len(glob.glob(f"{name}.*")) < 2 and time.time() < deadline:
        time.sleep(0.005)

m = D.load_dataset("mnist", args["mnist"])
n = args["n"]
datasets = [D.ArrayDataset("mnist", m.train_x[:n], m.train_y[:n], m.test_x[:50], m.test_y[:50], 10, m.class_names)]
if args.get("imagenet"):
    datasets.append(D.load_dataset("imagenet", args["imagenet"]))
writes = []
real_write = F._write
def write(ds, split, dest, workers):
    writes.append(str(dest))
    if args.get("race"):
        barrier(args["race"] + "-writing")   # both write at once
    return real_write(ds, split, dest, workers)
F._write = write
if args.get("no_lock"):
    F._locked = lambda path: contextlib.nullcontext()
if args.get("start"):
    barrier(args["start"])
stats, real_stat = [], os.stat
def counting(p, *a, **k):
    if not isinstance(p, int) and any(str(os.fspath(p)).startswith(r) for r in args.get("data_roots", [])):
        stats.append(os.fspath(p))
    return real_stat(p, *a, **k)
os.stat = counting
out = []
for ds in datasets:
    b = F.ensure_beton(ds, "train", args["cache"], num_workers=1)
    st = real_stat(b.path)
    out.append({"path": str(b.path), "written": b.written, "inode": st.st_ino, "mtime": st.st_mtime_ns})
os.stat = real_stat
print(json.dumps({"betons": out, "writes": len(writes), "data_stats": len(stats)}))
'''

REPO = Path(__file__).resolve().parents[1]


def _node(tmp_path, **args):
    import subprocess
    import sys
    script = tmp_path / "node.py"
    if not script.exists():
        script.write_text(_NODE)
    return subprocess.Popen([sys.executable, str(script), json.dumps({"repo": str(REPO), **args})],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_node_reuses_the_cache(shared_data, tmp_path):
    """Node A writes the betons (arrays and an image folder) into a shared cache folder; node B, another
    process with the images at another path, finds and reuses them: nothing rewritten, no data file stat'ed."""
    cache = tmp_path / "shared" / "ffcv"
    a_root = _imagenet_copy(shared_data, tmp_path / "a" / "imagenet")
    b_root = _imagenet_copy(shared_data, tmp_path / "b" / "mnt" / "imagenet")
    a = _finish(_node(tmp_path, mnist=str(shared_data), n=500, imagenet=str(a_root), cache=str(cache)))
    assert [x["written"] for x in a["betons"]] == [True, True] and a["writes"] == 2
    b = _finish(_node(tmp_path, mnist=str(shared_data), n=500, imagenet=str(b_root), cache=str(cache),
                      data_roots=[str(b_root)]))
    assert [x["written"] for x in b["betons"]] == [False, False] and b["writes"] == 0
    assert b["data_stats"] == 0                                      # found without touching the data
    for x, y in zip(a["betons"], b["betons"]):
        assert (x["path"], x["inode"], x["mtime"]) == (y["path"], y["inode"], y["mtime"])
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("lock", [True, False], ids=["locked", "no-lock"])
def test_two_nodes_writing_at_once(mnist, shared_data, tmp_path, lock):
    """Two processes ask for the same beton at the same moment. With the lock one writes and the other
    waits and reuses its file. Without one (a filesystem whose locks do not work across nodes) both write
    at once, to temporary names; one commit wins and the other keeps the winner's file. Either way: one
    whole, readable beton, no temporary file left."""
    cache, n = tmp_path / "cache", 5000
    args = dict(mnist=str(shared_data), n=n, cache=str(cache), start=str(tmp_path / "start"))
    if not lock:
        args.update(no_lock=True, race=str(tmp_path / "race"))
    out = [_finish(p) for p in [_node(tmp_path, **args), _node(tmp_path, **args)]]
    (x,), (y,) = (o["betons"] for o in out)
    assert x["path"] == y["path"] and x["inode"] == y["inode"]
    assert sorted([x["written"], y["written"]]) == [False, True]    # one commit
    assert sorted(o["writes"] for o in out) == ([1, 1] if not lock else [0, 1])
    ds = tiny_array(mnist, n=n)
    path, key, settings = F.beton_path(ds, "train", cache)
    assert str(path) == x["path"] and F.check_beton(path, key, settings, n) is None
    assert _files(cache) == sorted([path.name, path.name + ".json"])
    plan = SamplingPlan(make_subset(ds.train_y, "mnist", "balanced", 100, 1, 0.5, seed=0), ds.train_y)
    (xb, yb), = F.train_loader(ds, [plan], 1000, 1, "cpu", cache_dir=cache, num_workers=1)
    assert torch.equal(xb[0] * 256, torch.from_numpy(ds.train_x[plan.epoch(0)]).float())
    assert torch.equal(yb[0], torch.from_numpy(ds.train_y[plan.epoch(0)]))


def _write_in_child(ds, cache_dir, out):
    b = F.ensure_beton(ds, "train", cache_dir, num_workers=1)
    out.put((str(b.path), b.written))


def test_concurrent_writers(mnist, tmp_path):
    """Three forked processes ask for the same beton at once: one writes, all get the same valid file."""
    ds = tiny_array(mnist, n=2000)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_write_in_child, args=(ds, tmp_path, out)) for _ in range(3)]
    for pr in procs:
        pr.start()
    got = [out.get(timeout=120) for _ in procs]
    for pr in procs:
        pr.join(timeout=60)
        assert pr.exitcode == 0
    assert len({p for p, _ in got}) == 1 and sorted(w for _, w in got) == [False, False, True]
    p = Path(got[0][0])
    path, key, settings = F.beton_path(ds, "train", tmp_path)
    assert p == path and F.check_beton(p, key, settings, 2000) is None
    assert _files(tmp_path) == sorted([p.name, p.name + ".json"])


# --------------------------------------------------------------------------- bad input

def _imagenet_copy(shared_data, root: Path) -> Path:
    """Two classes, two train and one val image each, copied to root."""
    src = shared_data / "imagenette"
    wnids = sorted(p.name for p in (src / "train").iterdir())[:2]
    for split, k in (("train", 2), ("val", 1)):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for f in sorted((src / split / w).iterdir())[:k]:
                shutil.copyfile(f, root / split / w / f.name)
    return root


def test_bad_imagenet_folders(shared_data, tmp_path):
    root = _imagenet_copy(shared_data, tmp_path / "inet")
    cache = tmp_path / "cache"
    wnid = sorted(os.listdir(root / "train"))[0]
    # a corrupt JPEG only the decoder finds: the writer names it, leaves no beton and no temp file
    bad = root / "train" / wnid / "broken.JPEG"
    bad.write_bytes(b"not a jpeg at all" * 10)
    ds = D.load_dataset("imagenet", root)
    with pytest.raises(D.DatasetError, match="broken.JPEG"):
        F.write_beton(ds, "train", cache, num_workers=1)
    assert not [n for n in _files(cache) if not n.startswith(".") or n.endswith(".tmp")]
    assert not any(n.endswith(".tmp") for n in os.listdir(cache))
    # a non-image file and an empty class folder are named by the reader, before anything is written
    bad.unlink()
    (root / "train" / wnid / "notes.txt").write_text("hello")
    with pytest.raises(D.DatasetError, match="notes.txt"):
        D.load_dataset("imagenet", root)
    (root / "train" / wnid / "notes.txt").unlink()
    empty = root / "val" / wnid
    shutil.rmtree(empty)
    empty.mkdir()
    with pytest.raises(D.DatasetError, match=str(empty)):
        D.load_dataset("imagenet", root)
    # a FileDataset that lists a non-image file (not from the reader): the writer names it too
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    fake = D.FileDataset("imagenet", (str(txt),), np.zeros(1, np.int64), (str(txt),), np.zeros(1, np.int64),
                         1, ("n0",))
    with pytest.raises(D.DatasetError, match="x.txt"):
        F.write_beton(fake, "test", cache, num_workers=1)
