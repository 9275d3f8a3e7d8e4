"""FFCV data path: .beton writers with a content-keyed cache, and loaders that serve sampling plans.

The only module of the package that imports ffcv (imported lazily by trial.py for loader='ffcv').

What is written (one .beton per dataset and split, fields 'image' and 'label'):
  mnist, mnist-sample  raw uint8 pixels, NDArrayField (1, 28, 28); the loader scales by 1/256 (Caffe)
  cifar10              GCN + ZCA float32 arrays (preprocess.cifar_whitened_of, ZCA fitted on the full
                       training set), NDArrayField (3, 32, 32); the loader serves them as they are
  imagenet             JPEG (quality 90, FFCV's RGBImageField), each image resized *before writing* so
                       that its shorter side is 256 (torchvision Resize(256) on the PIL image, the same
                       resize the torch backend does); aspect ratio kept. FFCV's own `max_resolution`
                       bounds the longer side, which is not the paper's policy, so it is not used.

Cache: <cache_dir>/<dataset>-<split>-<key>.beton plus a JSON sidecar (<name>.beton.json: the key, the
writer settings, the sample count and the data's digests: the same whichever process wrote it). cache_dir: the argument, else
$IMBALANCE_FFCV_CACHE, else $IMBALANCE_CACHE, else ~/.cache/imbalance_core/ffcv; on a cluster a folder on
the shared filesystem (/shared/ffcv), so that a beton is written once, by whichever node needs it first,
and every other node and process reuses it. The key is a sha1 of the settings and of the split's manifest
digest (`manifest_digest`: arrays: datasets.digest; an image folder: each file's path below the split
folder and its label, the reader's listing), so finding a beton touches none of the data's files and does
not depend on where the data is mounted. A cached file is used when its sidecar matches (key, settings,
sample count) and the beton is whole by its own header and allocation table; anything else is rewritten.
A writer holds a per-file lock (flock), writes to a temporary name in the same folder and commits with
os.link (which fails where the file exists: a writer that lost a race keeps the winner's whole file, and
a file others may have open is never replaced) or, for a broken file, os.replace; so concurrent processes
on any node never see or produce a partial file. Set IMBALANCE_FFCV_VERIFY=1 to also check every file's
size against the writer's record (datasets.digest) before using a beton.

Sampling: a train loader serves K plans at once through ONE ffcv.Loader with batch K*B. Its traversal
order is a custom TraversalOrder that hands FFCV the next "chunk" of the run: for every plan, the
next chunk*B indices of `plan.stream()` (epochs `plan.epoch(0), plan.epoch(1), ...` concatenated,
repeats allowed), interleaved so that FFCV batch t is [plan 0's B | plan 1's B | ...]. The batches are
therefore exactly those of loaders.TensorLoader (same indices, same order). One Loader is compiled
once and iterated once per chunk (<= CHUNK_SAMPLES indices). Measured on 2 busy cores, 3 ROS epochs:
a Loader per epoch (indices=plan.epoch(e), SEQUENTIAL) costs 2-3 s per epoch on MNIST and 9-18 s on
the Imagenette slice in build + numba re-compile (8.9 s vs 2.3 s, and 39 s vs 12 s in all); re-iterating
a built Loader with a new order costs nothing measurable. Built Loaders are also pooled per process
(same file, batch, device, workers), so trial.py's loader per network and phase compiles once; a Loader
being iterated is never shared (a second simultaneous user gets its own).

Pipelines (x: (K, B, ...) float32 on `device`, y: (K, B) int64 on `device`):
  MNIST     NDArrayDecoder -> ToTensor [-> ToDevice] ; x * 1/256 on the device
  CIFAR-10  NDArrayDecoder -> ToTensor [-> ToDevice]
  ImageNet  train: RandomCropRGBImageDecoder(224) (a uniformly random 224x224 window of the decoded
            image, no rescale) -> RandomHorizontalFlip -> ToTensor [-> ToDevice];
            test:  CenterCropRGBImageDecoder((224, 224), ratio=224/256) (the centre 224 crop)
            then, on the device: NHWC uint8 -> NCHW float, (x/255 - IMAGENET_MEAN) / IMAGENET_STD.
  [ToDevice(device, non_blocking=True)] only when device is CUDA: the uint8 batch is copied once,
  whole, to the GPU; the float conversion runs there.
Crops and flips draw from numba's per-thread generators: augmentation is not seeded. Every yielded
tensor is new (never a view of FFCV's ring buffers), so a batch may be kept.

Side effects of ffcv handled here: importing ffcv sets torch's intra-op thread count to 1, and every
Loader iteration (and its worker thread) sets it to the loader's num_workers (ffcv's
Compiler.set_num_threads). Importing this module restores torch's count and replaces that classmethod
with one that sets numba's thread count only, so the trainer's torch threads are never changed by FFCV.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import datasets as D
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, cifar_whitened_of, scale_256
from .specs import DATASETS
from .sampling import SamplingPlan

_TORCH_THREADS = torch.get_num_threads()
import ffcv  # noqa: E402
from ffcv.fields import IntField, NDArrayField, RGBImageField  # noqa: E402
from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, NDArrayDecoder  # noqa: E402
from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402
from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, HeaderType  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402
import ffcv.writer as _ffcv_writer  # noqa: E402

import numba  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402


def _set_ffcv_threads(cls, n):
    """FFCV's Compiler.set_num_threads without its torch.set_num_threads(n) (see the module docstring)."""
    cls.num_threads = n if n >= 1 else (os.cpu_count() or 1)
    numba.set_num_threads(min(cls.num_threads, numba.config.NUMBA_NUM_THREADS))


Compiler.set_num_threads = classmethod(_set_ffcv_threads)
torch.set_num_threads(_TORCH_THREADS)  # `import ffcv` had set it to 1

FORMAT_VERSION = 1                    # bump when what is written changes
IMAGENET_SHORT_SIDE, IMAGENET_CROP, JPEG_QUALITY = 256, 224, 90
SPLITS = ("train", "test")
CHUNK_SAMPLES = 1 << 20               # indices handed to FFCV per traversal (all K plans together)
CACHE_ENV = ("IMBALANCE_FFCV_CACHE", "IMBALANCE_CACHE")   # the cache folder, first set wins


# --------------------------------------------------------------------------- cache and writers

def default_cache_dir() -> Path:
    """Where betons are cached: $IMBALANCE_FFCV_CACHE (a cluster: a folder on the shared filesystem, e.g.
    /shared/ffcv, so that every node reuses what one wrote), else $IMBALANCE_CACHE, else
    ~/.cache/imbalance_core/ffcv. A `cache_dir` argument overrides all three."""
    for var in CACHE_ENV:
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path.home() / ".cache" / "imbalance_core" / "ffcv"


def default_workers() -> int:
    return max(1, min(_TORCH_THREADS, os.cpu_count() or 1))


def _split_labels(ds, split: str) -> np.ndarray:
    return np.asarray(ds.train_y if split == "train" else ds.test_y, dtype=np.int64)


def writer_settings(ds, split: str) -> dict:
    """Everything that decides the bytes of a .beton besides the data itself."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    common = {"format": FORMAT_VERSION, "ffcv": ffcv.__version__, "ffcv_file_version": int(CURRENT_VERSION),
              "dataset": ds.name, "split": split, "fields": ["image", "label"]}
    if isinstance(ds, D.FileDataset):
        return {**common, "image": "jpeg", "jpeg_quality": JPEG_QUALITY, "short_side": IMAGENET_SHORT_SIDE,
                "resize": "torchvision.resize(PIL, bilinear, antialias)", "mode": "RGB"}
    if not isinstance(ds, D.ArrayDataset):
        raise TypeError(f"expected a datasets.ArrayDataset or FileDataset, got {type(ds).__name__}")
    kind = DATASETS[ds.name].preprocess
    if kind == "gcn-zca":
        return {**common, "image": "float32 NDArray", "preprocess": "gcn(55) + zca(bias 0.1) fitted on train"}
    if kind == "scale256":
        return {**common, "image": "uint8 NDArray", "preprocess": "none (x/256 in the loader)"}
    raise ValueError(f"no FFCV writer for dataset {ds.name!r}")


_KEYS: dict[tuple[int, str], tuple[object, str]] = {}     # (id(ds), split) -> (ds, key); ds kept so ids stay


def manifest_digest(ds, split: str) -> str:
    """The identity of what a split's beton is made from, found without touching the data's files:
    in-memory arrays: `datasets.digest(ds)` (name + every array: CIFAR-10's test arrays depend on the training
    set through ZCA, so both splits count); an image folder: sha256 of the name, the split and its manifest
    (each file's path below the split folder, `<class folder>/<file>`, and its label, in order), the listing
    the reader already made. So a node that mounts the data elsewhere (another /shared path, a copy) finds
    the same betons, and no process stats every file to find them (ImageNet: 1.28M files over NFS). A file
    changed in place under the same name is not seen: `verify=True` (or IMBALANCE_FFCV_VERIFY=1) compares
    `datasets.digest` (which reads every file's size) with what the writer recorded.
    Computed once per dataset object and split in a process."""
    hit = _KEYS.get((id(ds), split))
    if hit is not None and hit[0] is ds:
        return hit[1]
    if isinstance(ds, D.FileDataset):
        files = ds.train_files if split == "train" else ds.test_files
        h = hashlib.sha256(f"{ds.name}\0{split}\0{len(files)}\n".encode())
        for f, y in zip(files, _split_labels(ds, split)):
            p = Path(f)
            h.update(f"{p.parent.name}/{p.name}\0{int(y)}\n".encode())
        key = h.hexdigest()
    else:
        key = D.digest(ds)
    if len(_KEYS) >= 16:
        _KEYS.clear()
    _KEYS[(id(ds), split)] = (ds, key)
    return key


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _header(path: Path):
    if path.stat().st_size < HeaderType.itemsize:
        return None
    return np.fromfile(path, dtype=HeaderType, count=1)[0]


_COMPLETE: dict[tuple, str | None] = {}     # (path, inode, size, mtime_ns, n) -> beton_problem's verdict


def beton_problem(path: Path, num_samples: int) -> str | None:
    """None when `path` is a whole beton of `num_samples` samples, judged from the file alone: its header,
    and an allocation table that ends the file with one allocation per sample inside the data region (a
    truncated or partly written file fails). Whoever wrote it: two writers' files may differ in size (FFCV
    gives each writer process its own pages) and are both whole. The verdict is kept per file version."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    ident = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, int(num_samples))
    if ident in _COMPLETE:
        return _COMPLETE[ident]
    problem = _beton_problem(path, st.st_size, int(num_samples))
    if len(_COMPLETE) >= 64:
        _COMPLETE.clear()
    _COMPLETE[ident] = problem
    return problem


def _beton_problem(path: Path, size: int, n: int) -> str | None:
    head = _header(path)
    if head is None:
        return "shorter than a beton header"
    if int(head["version"]) != CURRENT_VERSION:
        return f"beton version {int(head['version'])}, expected {CURRENT_VERSION}"
    if int(head["num_samples"]) != n:
        return f"{int(head['num_samples'])} samples in the beton header, {n} expected"
    ptr = int(head["alloc_table_ptr"])
    if not 0 < ptr <= size:
        return f"allocation table at {ptr}, beyond the file's {size} bytes (truncated or not finished)"
    if (size - ptr) % ALLOC_TABLE_TYPE.itemsize:
        return "the allocation table is cut short (truncated)"
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=ptr)
    if len(table) != n:
        return f"{len(table)} allocations for {n} samples (truncated or not finished)"
    if n and (int((table["ptr"] + table["size"]).max()) > ptr or int(table["sample_id"].max()) >= n
              or np.unique(table["sample_id"]).size != n):
        return "the allocation table does not describe this file's samples"
    return None


def check_beton(path: Path, key: str, settings: dict, num_samples: int) -> str | None:
    """None when `path` is a complete beton written with `settings` for `key`; else what is wrong.
    The sidecar names the key, settings and sample count (the same whoever wrote them); the beton itself
    must be whole (`beton_problem`)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    problem = _sidecar_problem(path, key, settings, num_samples)
    return problem if problem is not None else beton_problem(path, num_samples)


def _sidecar_problem(path: Path, key: str, settings: dict, num_samples: int) -> str | None:
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return "no valid sidecar"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return "sidecar is for another key"
    if meta.get("settings") != settings:
        return f"written with other settings ({meta.get('settings')})"
    if meta.get("num_samples") != num_samples:
        return f"{meta.get('num_samples')} samples written, {num_samples} expected"
    return None


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on `lock_path` (flock: across processes; across NFS clients where the mount
    forwards locks to the server, as NFSv4 does without local_lock). Only saves duplicate work: writes are
    correct without it (a temporary name, then an atomic link or rename)."""
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:                      # a filesystem without locks: carry on unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _ArraySource:
    """Indexable (image, label) view of arrays for DatasetWriter."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return np.ascontiguousarray(self.x[i]), int(self.y[i])


class _JpegSource:
    """Indexable (HWC uint8 image with shorter side `short`, label) over image files.

    Runs in DatasetWriter's worker processes, where an exception would hang the writer: a file that
    cannot be decoded is recorded in `errors_path` and written as a black image; the caller raises.
    """

    def __init__(self, files, labels, short: int, errors_path: str):
        self.files, self.labels, self.short, self.errors_path = list(files), np.asarray(labels), short, errors_path

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision.transforms import functional as TF
        try:
            with Image.open(self.files[i]) as im:
                img = TF.resize(im.convert("RGB"), self.short)
            return np.asarray(img, dtype=np.uint8), int(self.labels[i])
        except Exception as e:  # noqa: BLE001 -- reported by the parent as DatasetError
            with open(self.errors_path, "a") as f:
                f.write(json.dumps([self.files[i], f"{type(e).__name__}: {e}"]) + "\n")
            return np.zeros((self.short, self.short, 3), np.uint8), int(self.labels[i])


@contextlib.contextmanager
def _quiet_writer():
    """DatasetWriter draws a tqdm progress bar on stderr; silence it."""
    orig = _ffcv_writer.tqdm
    _ffcv_writer.tqdm = lambda *a, **k: orig(*a, **{**k, "disable": True})
    try:
        yield
    finally:
        _ffcv_writer.tqdm = orig


def _write(ds, split: str, dest: Path, num_workers: int) -> None:
    y = _split_labels(ds, split)
    if isinstance(ds, D.FileDataset):
        files = ds.train_files if split == "train" else ds.test_files
        if not files:
            raise D.DatasetError(f"ImageNet: the {split} split has no image files")
        errors = dest.with_name(dest.name + ".errors")
        errors.unlink(missing_ok=True)
        source = _JpegSource(files, y, IMAGENET_SHORT_SIDE, str(errors))
        fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=JPEG_QUALITY), "label": IntField()}
        chunk = 16
    else:
        if DATASETS[ds.name].preprocess == "gcn-zca":
            tr, te = cifar_whitened_of(ds)
            x = tr if split == "train" else te
            fields = {"image": NDArrayField(np.dtype("<f4"), tuple(x.shape[1:])), "label": IntField()}
        else:
            x = ds.train_x if split == "train" else ds.test_x
            fields = {"image": NDArrayField(np.dtype("u1"), tuple(x.shape[1:])), "label": IntField()}
        if len(x) == 0:
            raise D.DatasetError(f"{ds.name}: the {split} split is empty")
        source, errors, chunk = _ArraySource(x, y), None, 1000
    writer = DatasetWriter(str(dest), fields, num_workers=max(1, min(num_workers, len(y))))
    try:
        with _quiet_writer():
            writer.from_indexed_dataset(source, chunksize=chunk)
        if errors is not None and errors.exists():
            bad = [json.loads(line) for line in errors.read_text().splitlines() if line.strip()]
            if bad:
                listed = "; ".join(f"{f} ({msg})" for f, msg in bad[:5])
                more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
                raise D.DatasetError(f"ImageNet: expected image files PIL can decode; cannot decode {listed}{more}")
    finally:
        if errors is not None:
            errors.unlink(missing_ok=True)


def beton_path(ds, split: str, cache_dir=None) -> tuple[Path, str, dict]:
    """(path, key, settings) of the cached beton of `ds`'s `split` (nothing is written or read)."""
    settings = writer_settings(ds, split)
    key = hashlib.sha1((json.dumps(settings, sort_keys=True) + manifest_digest(ds, split)).encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{ds.name}-{split}-{key[:20]}.beton", key, settings


@dataclass(frozen=True)
class Beton:
    """A cached beton: where it is, and whether this call wrote it (False: found, written by any process)."""
    path: Path
    written: bool
    seconds: float                      # this call's time (writing, or finding and checking)


def _verify_default() -> bool:
    return os.environ.get("IMBALANCE_FFCV_VERIFY", "").strip().lower() in ("1", "true", "yes")


def _data_problem(path: Path, ds) -> str | None:
    """verify: None when the sidecar's data digest is `datasets.digest(ds)` (every file's size read)."""
    try:
        recorded = json.loads(_sidecar(path).read_text()).get("data_digest")
    except (OSError, ValueError, AttributeError):
        return "no valid sidecar"
    return None if recorded == D.digest(ds) else "the data changed since it was written (datasets.digest)"


def ensure_beton(ds, split: str, cache_dir=None, num_workers: int | None = None, *,
                 verify: bool | None = None) -> Beton:
    """The .beton of `ds`'s `split`, written unless a valid copy is in the cache folder (any process or
    node may have written it: on a cluster the folder is on shared storage, $IMBALANCE_FFCV_CACHE).

    Finding it reads the sidecar and the beton's header and allocation table; the data's files are not
    touched (manifest_digest). Writing: under a lock file beside it (one writer at a time; the others wait
    and then find its file), to a temporary name in the same folder, then committed with os.link, which
    fails where the file exists: a writer that lost a race (no working lock, a stale NFS lookup) keeps the
    winner's whole file rather than replacing a file that others may have open. Only a file that fails its
    check is replaced (os.replace, atomic). The sidecar (the same from any writer) is renamed into place
    just before the beton.
    verify (default $IMBALANCE_FFCV_VERIFY): also compare datasets.digest (stats every file) with the
    digest the writer recorded, and rewrite on a mismatch.
    """
    t0 = time.perf_counter()
    verify = _verify_default() if verify is None else bool(verify)
    path, key, settings = beton_path(ds, split, cache_dir)
    n = len(_split_labels(ds, split))

    def problem():
        p = check_beton(path, key, settings, n)
        return p if p is not None or not verify else _data_problem(path, ds)

    if problem() is None:
        return Beton(path, False, time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(f".{path.name}.lock")):
        _refresh_listing(path.parent)
        if problem() is None:                          # another process wrote it meanwhile
            return Beton(path, False, time.perf_counter() - t0)
        tag = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp = path.with_name(f".{path.name}.{tag}.tmp")
        tmp_side = path.with_name(f".{path.name}.json.{tag}.tmp")
        try:
            _write(ds, split, tmp, num_workers or default_workers())
            bad = beton_problem(tmp, n)
            if bad is not None:
                raise RuntimeError(f"FFCV wrote {tmp} incompletely: {bad}")
            # the sidecar first: its content is the same from any writer (nothing about who or when)
            tmp_side.write_text(json.dumps({"key": key, "settings": settings, "num_samples": n,
                                            "manifest": manifest_digest(ds, split), "data_digest": D.digest(ds)},
                                           indent=1, sort_keys=True))
            os.replace(tmp_side, _sidecar(path))
            stale = verify and beton_problem(path, n) is None       # whole, but made from other data
            written = _commit(tmp, path, n, replace=stale)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_side.unlink(missing_ok=True)
    bad = problem()
    if bad is not None:
        raise RuntimeError(f"{path}: just written but fails its check: {bad}")
    return Beton(path, written, time.perf_counter() - t0)


def _refresh_listing(folder: Path) -> None:
    """List `folder`: on NFS this revalidates the client's cached lookups in it (a file another node created
    may otherwise look absent for up to the attribute-cache time). Best effort; the link commit is the guard."""
    try:
        os.listdir(folder)
    except OSError:
        pass


def _commit(tmp: Path, path: Path, n: int, replace: bool = False) -> bool:
    """Put the whole beton `tmp` at `path`: True if ours is the file there now, False if another writer's
    whole file was there first (kept; ours is dropped by the caller). replace: `path` is known to be stale
    (verify found other data): replace it whatever its state."""
    if not replace:
        try:
            os.link(tmp, path)                          # atomic, and fails where `path` exists (NFS too)
            return True
        except FileExistsError:
            if beton_problem(path, n) is None:
                return False                            # another writer's whole file: keep it
        except OSError:                                 # no hard links here: check, then rename
            if path.exists() and beton_problem(path, n) is None:
                return False
    os.replace(tmp, path)                               # a stale or broken file: replace it, atomically
    return True


def write_beton(ds, split: str, cache_dir=None, num_workers: int | None = None, *,
                verify: bool | None = None) -> Path:
    """The .beton of `ds`'s `split` ('train' or 'test'), written unless a valid cached copy exists
    (ensure_beton)."""
    return ensure_beton(ds, split, cache_dir, num_workers, verify=verify).path


# --------------------------------------------------------------------------- loaders

def _random_crop(height, width, size, _unused):
    """numba crop generator: a uniformly random size x size window (the whole side if smaller)."""
    c = min(size, height, width)
    i = np.random.randint(0, height - c + 1)
    j = np.random.randint(0, width - c + 1)
    return i, j, c, c


class RandomCropRGBImageDecoder(ResizedCropRGBImageDecoder):
    """Decode a JPEG and cut a uniformly random `size` x `size` window (no rescaling; the paper's crop)."""

    def __init__(self, size: int = IMAGENET_CROP):
        super().__init__((size, size))
        self.scale, self.ratio = int(size), 0.0

    @property
    def get_crop_generator(self):
        return _random_crop


class _SetOrder(TraversalOrder):
    """A TraversalOrder that serves whatever index array the owner set last (`next_order`).

    FFCV 1.0.2 instantiates a custom order by calling it with the loader (`order(loader)`), so an
    instance is passed and __call__ finishes the initialisation.
    """

    def __init__(self, first: np.ndarray):
        self.next_order = first

    def __call__(self, loader):
        TraversalOrder.__init__(self, loader)
        return self

    def sample_order(self, epoch: int):
        return self.next_order


def _device(device) -> torch.device:
    return torch.device(device if device is not None else "cpu")


def _on_device(device: torch.device):
    """FFCV's epoch iterator makes its CUDA streams on the current device: make that `device` (cuda:N)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _image_pipeline(ds, train: bool, device: torch.device) -> list:
    if isinstance(ds, D.FileDataset):
        if train:
            ops = [RandomCropRGBImageDecoder(IMAGENET_CROP), RandomHorizontalFlip()]
        else:
            ops = [CenterCropRGBImageDecoder((IMAGENET_CROP, IMAGENET_CROP), ratio=IMAGENET_CROP / IMAGENET_SHORT_SIDE)]
    else:
        ops = [NDArrayDecoder()]
    ops.append(ToTensor())
    if device.type == "cuda":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def _label_pipeline(device: torch.device) -> list:
    ops = [IntDecoder(), ToTensor()]
    if device.type == "cuda":
        ops.append(ToDevice(device, non_blocking=True))
    return ops


def _finisher(ds, device: torch.device):
    """Batch (N, ...) from FFCV -> model input on `device` (always a new tensor, never FFCV's buffer)."""
    if isinstance(ds, D.FileDataset):
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0)

        def finish(x):   # NHWC uint8 -> NCHW float, (x/255 - mean) / std
            out = torch.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=torch.float32, device=device)
            out.copy_(x.permute(0, 3, 1, 2))
            return out.sub_(mean).mul_(inv_std)
        return finish
    if DATASETS[ds.name].preprocess == "gcn-zca":
        return lambda x: x.to(device).clone()
    return lambda x: scale_256(x.to(device))


class _Compiled:
    """One built ffcv.Loader (its numba pipeline compiles on first use), reused while not `busy`."""

    def __init__(self, path: Path, ds, train: bool, batch: int, order_len: int, device: torch.device,
                 num_workers: int, batches_ahead: int):
        self.busy = False
        pipelines = {"image": _image_pipeline(ds, train, device), "label": _label_pipeline(device)}
        if train:
            self.order = _SetOrder(np.zeros(order_len, dtype=np.int64))   # fixes len(loader) = order_len // batch
            self.loader = Loader(str(path), batch_size=batch, num_workers=num_workers, order=self.order, seed=0,
                                 drop_last=True, batches_ahead=batches_ahead, pipelines=pipelines)
        else:
            self.order = None
            self.loader = Loader(str(path), batch_size=batch, num_workers=num_workers, seed=0,
                                 order=OrderOption.SEQUENTIAL, drop_last=False, batches_ahead=batches_ahead,
                                 pipelines=pipelines)


# Built Loaders by (file identity, pipeline, batch, ...): trial.py asks for a loader per network and phase
# (one after another on CPU), and each new Loader would re-compile its pipeline (seconds; ImageNet ~10-20 s
# on 2 busy cores). A Loader in use is `busy`; a second simultaneous user gets a new one.
_POOL: dict[tuple, list[_Compiled]] = {}
_POOL_KEYS = 8


@contextlib.contextmanager
def _acquire(key: tuple, build):
    entries = _POOL.pop(key, [])
    _POOL[key] = entries                                   # most recently used last
    while len(_POOL) > _POOL_KEYS:
        old = next(iter(_POOL))
        if any(e.busy for e in _POOL[old]):
            break
        del _POOL[old]
    entry = next((e for e in entries if not e.busy), None)
    if entry is None:
        entry = build()
        entries.append(entry)
    entry.busy = True
    try:
        yield entry
    finally:
        entry.busy = False


def _file_id(path: Path) -> tuple:
    st = path.stat()
    return str(path), st.st_ino, st.st_size, st.st_mtime_ns


class FFCVTrainLoader:
    """K sampling plans through one ffcv.Loader: yields `iterations` batches (x (K,B,...), y (K,B))."""

    def __init__(self, path: Path, ds, plans: list[SamplingPlan], batch_size: int, iterations: int, device,
                 num_workers: int | None = None, chunk_samples: int = CHUNK_SAMPLES, batches_ahead: int = 3,
                 start: int = 0):
        """start: the iterations a resumed phase trained already (TensorLoader's start): each plan's stream
        skips what it drew, and the loader yields the rest, the same indices; a random augmentation (ImageNet's
        crops and flips, drawn in FFCV's numba pipeline) is not resumed."""
        if not plans:
            raise ValueError("train_loader needs at least one sampling plan")
        if int(batch_size) < 1 or int(iterations) < 1:
            raise ValueError(f"batch_size={batch_size!r} and iterations={iterations!r} must be integers >= 1")
        self.path, self.ds, self.plans = Path(path), ds, list(plans)
        self.B, self.iterations, self.K = int(batch_size), int(iterations), len(self.plans)
        self.start = int(start)
        if not 0 <= self.start < self.iterations:
            raise ValueError(f"start={start!r} must be in 0..{self.iterations - 1} (iterations={iterations})")
        self.device = _device(device)
        self.max_chunk = max(1, int(chunk_samples) // (self.K * self.B))   # iterations per FFCV traversal
        self.chunk = min(self.iterations, self.max_chunk)
        self.finish = _finisher(ds, self.device)
        self.num_workers, self.batches_ahead = num_workers or default_workers(), int(batches_ahead)
        head = _header(self.path)
        n = -1 if head is None else int(head["num_samples"])
        for p in self.plans:
            if len(p.labels) != n:
                raise ValueError(f"a plan indexes {len(p.labels)} training examples but {self.path} holds {n}")

    def __len__(self) -> int:
        return self.iterations - self.start

    def chunks(self) -> Iterator[np.ndarray]:
        """The index arrays handed to FFCV, one per traversal: batch t is [plan 0's B | plan 1's B | ...]."""
        streams = [p.stream() for p in self.plans]
        for s in streams:
            s.take(self.start * self.B)
        done = self.start
        while done < self.iterations:
            c = min(self.chunk, self.iterations - done)
            idx = np.stack([s.take(c * self.B) for s in streams]).reshape(self.K, c, self.B)
            yield idx.transpose(1, 0, 2).reshape(-1)
            done += c

    def __iter__(self):
        K, B, KB = self.K, self.B, self.K * self.B
        key = ("train", _file_id(self.path), KB, self.max_chunk, str(self.device), self.num_workers,
               self.batches_ahead, Compiler.is_enabled)
        build = lambda: _Compiled(self.path, self.ds, True, KB, self.max_chunk * KB, self.device,  # noqa: E731
                                  self.num_workers, self.batches_ahead)
        with _acquire(key, build) as c:
            for order in self.chunks():
                c.order.next_order = order
                with _on_device(self.device):
                    it = iter(c.loader)
                try:
                    for x, y in it:
                        x = self.finish(x)
                        yield x.view(K, B, *x.shape[1:]), y.to(self.device).view(K, B).clone()
                finally:
                    it.close()


def train_loader(ds, plans: list[SamplingPlan], batch_size: int, iterations: int, device, *,
                 cache_dir=None, num_workers: int | None = None, chunk_samples: int = CHUNK_SAMPLES,
                 batches_ahead: int | None = None, start: int = 0) -> FFCVTrainLoader:
    """FFCV training loader for trial.py: writes (or reuses) the training beton, then serves the plans."""
    path = write_beton(ds, "train", cache_dir, num_workers)
    if batches_ahead is None:
        batches_ahead = 2 if isinstance(ds, D.FileDataset) else 3   # ImageNet slots are large (K*B images)
    return FFCVTrainLoader(path, ds, plans, batch_size, iterations, device, num_workers=num_workers,
                           chunk_samples=chunk_samples, batches_ahead=batches_ahead, start=start)


def test_batches(ds, device, batch_size: int = 250, *, cache_dir=None,
                 num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test split in order through FFCV (ImageNet: centre 224 crop), as (x, y) on `device`."""
    device = _device(device)
    path = write_beton(ds, "test", cache_dir, num_workers)
    workers = num_workers or default_workers()
    key = ("test", _file_id(path), int(batch_size), str(device), workers, Compiler.is_enabled)
    finish = _finisher(ds, device)
    with _acquire(key, lambda: _Compiled(path, ds, False, int(batch_size), 0, device, workers, 3)) as c:
        with _on_device(device):
            it = iter(c.loader)
        try:
            for x, y in it:
                yield finish(x), y.to(device).view(-1).clone()
        finally:
            it.close()
