"""The prepared GPU check (issues 5 and 26): one short run on a CUDA machine, one results file.

    here, once:  .venv/bin/python benchmarks/gpu_check.py --prepare    (MNIST -> .gpu-data/, git-ignored)
    there:       python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json --budget-s 540
                 (bash benchmarks/gpu_check.sh does both steps; the device run carries .gpu-data)
    here, CI:    .venv/bin/python benchmarks/gpu_check.py --cpu --out /tmp/gpu_check.json   (a dry run:
                 tiny sizes, the same code path, seconds; tests/test_gpu_check.py)

It needs PyTorch, numpy and scikit-learn only (no Ray, MLflow or FFCV, no network), and calls the library's
own entry points: models.build_model, train.StackedNets / train.train / train.predict (the stacked trainer),
packing (the stack size, halve_on_oom) and trial.run_trials (a real pack). Sections, in this order, each
recorded in the results file with its status ("ok", "skipped: why", "error") and seconds; the file is
rewritten after every section, so a run cut off by its time limit still returns what it measured:

  env         torch, CUDA, cuDNN, the GPU, the torch.backends precision flags in force
  memory      packing.memory_report around a freed allocation (PyTorch's cache counted as free) and the
              stack auto_pack_size plans at GPU shares 1, 0.5, 0.25, per model
  equality    stacked (vmap) against alone, LeNet-5, All-CNN-C, ResNet-10: train (parameters and BatchNorm
              buffers after a few SGD steps from one initialisation on the same batches; dropout on, each
              network's masks from its own seed: train.StackedNets noise_seeds) and eval (softmax of the same weights); in full fp32 and with
              the precision flags as they are (cuDNN convolutions in TF32 by default)
  oom         packing.halve_on_oom on a real out-of-memory (All-CNN-C stacks under a small per-process budget)
  resume      a stacked LeNet-5 pack mixing losses (baseline, ROS, LA, CB-focal, two-phase ROS on the whole
              network: losses.stacked on CUDA) cut inside phase 1 and inside phase 2 by a checkpoint inside a
              phase (run_trials' on_phase) and resumed from it: every metric equal to the pack run through
  packs       trial.run_trials, several packs in one process: two short probe packs (time per iteration), then
              the LeNet-5 pack at the paper's 10,000 iterations on the whole GPU and again under a 24 GB budget
              (torch.cuda.set_per_process_memory_fraction: an A10G), each network's AUC against the CPU run of
              the same config (docs/results/mnist-paper/networks.csv, read only), and the two GPU runs against
              each other; the stack auto_pack_size planned before each pack (after the packs before it)
  budget24    per model: the stack auto_pack_size plans for an A10G's 24 GB (fraction = 24 GB / this GPU)
              and two training steps at that stack under that per-process budget: does it fit, peak memory
  throughput  per model and stack size (1, 4, 16, 64, 128, 256): images/s and torch.cuda.max_memory_allocated
              per network on synthetic tensors (the paper's batch and image sizes), against packing's
              per-network estimate; a stack that would not fit or not finish in the time left is skipped

The --cpu dry run uses stack sizes 1 and 2, small batches, ResNet-10 at 64 px, a 3-network pack at a few
iterations, a simulated out-of-memory, and no memory budget (CPU); its numbers mean nothing, its code path
is the real one.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

T_START = time.perf_counter()         # the budget counts from here (importing torch takes seconds)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from imbalance_core import packing  # noqa: E402
from imbalance_core import train as TR  # noqa: E402
from imbalance_core.models import build_model  # noqa: E402

GPU_DATA = ROOT / ".gpu-data"
CPU_RESULTS = ROOT / "docs" / "results" / "mnist-paper" / "networks.csv"
A10G_BYTES = 23028 * 2 ** 20          # an A10G's memory as nvidia-smi reports it on a g5 (the "24 GB" GPU)
NETS = {                              # model -> the dataset whose schedule, input and classes it has
    "lenet5": ("mnist", (1, 28, 28), 10),
    "allcnnc": ("cifar10", (3, 32, 32), 10),
    "resnet10": ("imagenet", (3, 224, 224), 1000),
}
PAPER_BATCH = {"lenet5": 64, "allcnnc": 256, "resnet10": 256}
METHODS = ("baseline", "ros", "rus", "two-phase-ros", "two-phase-rus")


@dataclass
class Profile:
    """Sizes of one kind of run: the real check on CUDA, or the --cpu dry run."""
    device: str
    stacks: tuple[int, ...]
    batch: dict[str, int]
    image: dict[str, tuple[int, ...]]
    equality_k: int
    equality_steps: int
    equality_batch: dict[str, int]
    timed_s: float                    # throughput: seconds of timed steps per point (at least min_steps)
    min_steps: int
    max_steps: int
    pack_iterations: int | None       # None: the paper's 10,000
    pack_cells: tuple | None          # None: every network of the CPU results; else ((imbalance, rho, mu), ...)
    pack_methods: tuple[str, ...] = METHODS
    pack_seeds: tuple[int, ...] = (0, 1, 2)
    pack_n_per_class: int | None = None   # None: the paper's 5,000
    pack_dataset: str = "mnist"           # the dry run: mnist-sample (1,000 test images instead of 8,920)
    probe_iterations: tuple[int, ...] = ()
    oom_model: str = "allcnnc"
    oom_members: int = 16
    oom_budget_bytes: float = 4e9
    extra: dict = field(default_factory=dict)


CUDA_PROFILE = Profile(
    device="cuda", stacks=(1, 4, 16, 64, 128, 256), batch=dict(PAPER_BATCH),
    image={m: NETS[m][1] for m in NETS}, equality_k=3, equality_steps=5,
    equality_batch={"lenet5": 64, "allcnnc": 64, "resnet10": 16}, timed_s=1.5, min_steps=3, max_steps=200,
    pack_iterations=None, pack_cells=None, probe_iterations=(300, 100))
CPU_PROFILE = Profile(
    device="cpu", stacks=(1, 2), batch={"lenet5": 8, "allcnnc": 2, "resnet10": 2},
    image={"lenet5": (1, 28, 28), "allcnnc": (3, 32, 32), "resnet10": (3, 64, 64)}, equality_k=2,
    equality_steps=2, equality_batch={"lenet5": 8, "allcnnc": 2, "resnet10": 2}, timed_s=0.0, min_steps=2,
    max_steps=2, pack_iterations=5, pack_cells=(("step", 10.0, 0.5),),
    pack_methods=("baseline", "ros", "two-phase-ros"), pack_seeds=(0,), pack_n_per_class=None,
    pack_dataset="mnist-sample", probe_iterations=(), oom_model="lenet5", oom_members=6,
    extra={"resume_iterations": 9})


# --------------------------------------------------------------------------- plumbing

class Budget:
    """The run's time budget, and where a section in progress saves what it has so far (`save`)."""

    def __init__(self, seconds: float, t0: float | None = None, save=None):
        self.t0, self.seconds = time.perf_counter() if t0 is None else t0, float(seconds)
        self._save = save

    def save(self, partial: dict) -> None:
        if self._save is not None:
            self._save(partial)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def _clean(x):
    """JSON-safe: numpy scalars and arrays to Python, non-finite floats to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1))
    os.replace(tmp, path)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _release() -> None:
    packing.release_cached_memory()


def _peak_reset(dev):
    if dev.type == "cuda":
        _release()
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev)
    return 0


def _peak(dev, base):
    return torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else None


def _total(dev) -> int | None:
    return torch.cuda.mem_get_info(dev)[1] if dev.type == "cuda" else None


def _set_budget(dev, nbytes: float | None) -> float | None:
    """torch.cuda.set_per_process_memory_fraction for `nbytes` of this GPU (None: the whole GPU again)."""
    if dev.type != "cuda":
        return None
    fraction = 1.0 if nbytes is None else min(1.0, float(nbytes) / _total(dev))
    torch.cuda.set_per_process_memory_fraction(fraction, dev.index)   # None: the current device ("cuda" is refused)
    return fraction


class Repeat:
    """A loader for train.train: the same (x (K,B,...), y (K,B)) `n` times."""

    def __init__(self, x, y, n):
        self.x, self.y, self.n = x, y, int(n)

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.x, self.y


def _schedule(model: str, iterations: int, lr: float | None = None):
    return TR.schedule_for(NETS[model][0], iterations=iterations, base_lr=lr)


# --------------------------------------------------------------------------- sections

def section_env(dev, prof, budget, data_dir) -> dict:
    flags = {}
    probes = {
        "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "cuda.matmul.allow_fp16_reduced_precision_reduction":
            lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "cuda.matmul.allow_bf16_reduced_precision_reduction":
            lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        "cudnn.enabled": lambda: torch.backends.cudnn.enabled,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
        "cudnn.deterministic": lambda: torch.backends.cudnn.deterministic,
        "cudnn.fp32_precision": lambda: torch.backends.cudnn.fp32_precision,
        "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
        "fp32_precision": lambda: torch.backends.fp32_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, get in probes.items():
            try:
                flags[name] = get()
            except Exception as e:  # noqa: BLE001 -- a flag this torch lacks
                flags[name] = f"n/a ({type(e).__name__})"
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(dev),
           "flags": flags, "data_dir": str(data_dir), "cpu_results": str(CPU_RESULTS.relative_to(ROOT)),
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "get_per_process_memory_fraction": hasattr(torch.cuda, "get_per_process_memory_fraction")}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", total_memory=p.total_memory,
                   multiprocessors=p.multi_processor_count)
        try:
            out["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["nvidia_smi"] = f"n/a ({e})"
    return out


def section_memory(dev, prof, budget, data_dir) -> dict:
    """PyTorch's cache counted as free, on the real allocator; the stacks planned at GPU shares."""
    out: dict = {"planned": {}}
    if dev.type != "cuda":
        out["cuda"] = False
        for m in NETS:                   # the plan for an A10G at shares 1, 1/2, 1/4 (arithmetic only)
            out["planned"][m] = {str(f): packing.stack_size(m, PAPER_BATCH[m], f * A10G_BYTES)
                                 for f in (1.0, 0.5, 0.25)}
        return out
    _release()
    before = packing.memory_report(dev)
    block = torch.empty(int(min(8e9, 0.25 * before.available)), dtype=torch.uint8, device=dev)
    held = packing.memory_report(dev)
    del block                             # freed: now in PyTorch's cache, "used" for mem_get_info
    cached = packing.memory_report(dev)
    _release()
    after = packing.memory_report(dev)
    out.update(cuda=True, before=before.to_dict(), holding=held.to_dict(), freed_in_cache=cached.to_dict(),
               cache_emptied=after.to_dict())
    out["cache_counted_as_free"] = abs(cached.usable - before.usable) < 0.02 * before.usable
    out["mem_get_info_drop_while_cached"] = before.free - cached.free
    for m in NETS:
        out["planned"][m] = {str(f): packing.auto_pack_size(m, PAPER_BATCH[m], dev, f) for f in (1.0, 0.5, 0.25)}
    return out


def _max_rel(a: dict, b: dict, ref: dict | None = None) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b - ref|) over the float tensors of two state dicts."""
    worst_abs, worst_rel = 0.0, 0.0
    for k, v in b.items():
        if not torch.is_floating_point(v):
            if not torch.equal(a[k], v):
                return math.inf, math.inf
            continue
        d = (a[k].double() - v.double()).abs().max().item()
        worst_abs = max(worst_abs, d)
        if ref is not None:
            moved = (v.double() - ref[k].double()).abs().max().item()
            if moved > 0:
                worst_rel = max(worst_rel, d / moved)
    return worst_abs, worst_rel


@contextlib.contextmanager
def _tf32(allowed: bool):
    """cuDNN convolutions and cuBLAS matmuls in TF32 (allowed) or full fp32, restored afterwards. The legacy
    flags (allow_tf32); where the new per-backend API was used already (torch refuses to mix them), that one."""
    def get():
        try:
            return "legacy", (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        except RuntimeError:
            return "new", (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)

    def put(api, values):
        if api == "legacy":
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = values
        else:
            torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = values

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api, old = get()
        put(api, (allowed, allowed) if api == "legacy" else ("tf32" if allowed else "ieee",) * 2)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            put(api, old)


# stacked against alone: (max difference / the training update, max softmax difference) allowed
EQUALITY_TOLERANCES = {"fp32": (1e-3, 1e-4), "default_flags": (2e-2, 1e-2)}


def section_equality(dev, prof, budget, data_dir) -> dict:
    """Stacked against alone on this device, per model: train and eval. On CUDA twice: in full fp32 (TF32
    off: what stacking itself changes) and with the flags as they are (cuDNN's TF32 convolutions on by
    default: what the trainer runs today)."""
    runs = ("fp32", "default_flags") if dev.type == "cuda" else ("default_flags",)
    out = {"tolerances": {r: dict(zip(("train_relative_to_update", "eval_softmax"), EQUALITY_TOLERANCES[r]))
                          for r in runs}}
    for model in NETS:
        out[model] = {}
        for run in runs:
            with (_tf32(False) if run == "fp32" else contextlib.nullcontext()):
                out[model][run] = _equality(model, dev, prof, *EQUALITY_TOLERANCES[run])
        out[model]["ok"] = all(out[model][r]["ok"] for r in runs)
    out["ok"] = all(out[m]["ok"] for m in NETS)
    return out


def _equality(model, dev, prof, tol_update, tol_softmax) -> dict:
    t0 = time.perf_counter()
    dataset, _, classes = NETS[model]
    K, T, B, shape = prof.equality_k, prof.equality_steps, prof.equality_batch[model], prof.image[model]
    g = torch.Generator().manual_seed(1)
    x = torch.randn((K, B, *shape), generator=g).to(dev)
    y = torch.randint(0, classes, (K, B), generator=g).to(dev)
    xe = torch.randn((max(8, 2 * B), *shape), generator=g).to(dev)

    def build(k):                                  # dropout on: each network's masks from its own seed
        return build_model(model, classes, seed=k)
    init = [{n: v.detach().clone() for n, v in build(k).state_dict().items()} for k in range(K)]
    sched = _schedule(model, T)
    stacked = TR.StackedNets([build(k) for k in range(K)], dev, noise_seeds=list(range(K)))
    TR.train(stacked, Repeat(x, y, T), sched)
    s_states = stacked.state_dicts()
    train_abs, train_rel = 0.0, 0.0
    for k in range(K):
        alone = TR.StackedNets([build(k)], dev, noise_seeds=[k])
        TR.train(alone, Repeat(x[k:k + 1], y[k:k + 1], T), sched)
        a, r = _max_rel(s_states[k], alone.state_dicts()[0], init[k])
        train_abs, train_rel = max(train_abs, a), max(train_rel, r)
        del alone
    # eval: the stacked networks against each one alone, with the very same (trained) weights
    ps = TR.predict(stacked, [(xe, None)])
    eval_abs, agree = 0.0, []
    for k in range(K):
        m = build(k)
        m.load_state_dict(s_states[k])
        pa = TR.predict(TR.StackedNets([m], dev), [(xe, None)])[0]
        eval_abs = max(eval_abs, (ps[k] - pa).abs().max().item())
        agree.append((ps[k].argmax(-1) == pa.argmax(-1)).float().mean().item())
    del stacked, x, y, xe
    _release()
    out = {"K": K, "steps": T, "batch": B, "input": list(shape),
           "train": {"max_abs_diff": train_abs, "max_diff_relative_to_update": train_rel, "ok": train_rel <= tol_update},
           "eval": {"max_abs_softmax_diff": eval_abs, "argmax_agreement": min(agree), "ok": eval_abs <= tol_softmax},
           "seconds": time.perf_counter() - t0}
    out["ok"] = out["train"]["ok"] and out["eval"]["ok"]
    return out


def _train_stack(model, K, B, shape, dev, warm, steps=None, timed_s=0.0, max_steps=200):
    """Build K networks (one initialisation, stacked K times: values do not matter here), train `warm` steps,
    then `steps` timed steps (None: enough for `timed_s` seconds, at least 3). Returns the measurements."""
    dataset, _, classes = NETS[model]
    base = _peak_reset(dev)
    x = torch.randn((K, B, *shape), device=dev)
    y = torch.randint(0, classes, (K, B), device=dev)
    m = build_model(model, classes, seed=0)
    nets = TR.StackedNets([m] * K, dev, noise_seeds=list(range(K)))
    t0 = time.perf_counter()
    TR.train(nets, Repeat(x, y, warm), _schedule(model, warm, 1e-3))
    _sync(dev)
    warm_s = time.perf_counter() - t0
    if steps is None:
        per = warm_s / max(1, warm)
        steps = int(min(max_steps, max(3, math.ceil(timed_s / max(per, 1e-6)))))
    st = TR.train(nets, Repeat(x, y, steps), _schedule(model, steps, 1e-3))
    peak = _peak(dev, base)
    del nets, x, y, m
    _release()
    return {"warmup_steps": warm, "warmup_s": warm_s, "steps": st.iterations, "seconds": st.seconds,
            "step_ms": 1e3 * st.seconds / max(1, st.iterations), "images_per_s": st.images_per_second,
            "images_per_s_per_network": st.images_per_second / K,
            "peak_bytes": peak, "peak_bytes_per_network": None if peak is None else peak / K}


def section_throughput(dev, prof, budget, data_dir, reserve_s=15.0) -> dict:
    rows, out = [], {"stacks": list(prof.stacks), "note": "synthetic tensors; estimate = packing.network_bytes(margin=1,"
                     " cache=False): BYTES_PER_IMAGE x batch + PARAM_BYTES; the stack plan uses 2x that (+ LeNet-5's"
                     " cached features) and 60% of the usable memory"}
    models = list(NETS)
    for mi, model in enumerate(models):
        B, shape = prof.batch[model], prof.image[model]
        est = packing.network_bytes(model, B, margin=1.0, cache=False)
        share_s = max(0.0, (budget.left() - reserve_s) / (len(models) - mi))    # this model's share of the time
        t_model = time.perf_counter()
        last = None
        for K in prof.stacks:
            row = {"model": model, "stack": K, "batch": B, "input": list(shape), "estimate_bytes": est,
                   "estimate_bytes_x2": 2 * est}
            spent = time.perf_counter() - t_model
            input_bytes = K * B * int(np.prod(shape)) * 4
            per_net = last["peak_bytes_per_network"] if last and last.get("peak_bytes_per_network") else est
            if dev.type == "cuda":
                _release()
                avail = packing.usable_memory(dev)
                need = K * per_net + input_bytes
                row["predicted_bytes"], row["usable_bytes"] = need, avail
                if need > 0.92 * avail:
                    rows.append({**row, "status": f"skipped: needs ~{need / 1e9:.1f} GB of {avail / 1e9:.1f} GB usable"})
                    continue
            if last is not None:
                guess = (last["warmup_s"] + last["seconds"]) * K / last["stack"] * 1.5
                if spent + guess > share_s:
                    rows.append({**row, "status": f"skipped: ~{guess:.0f} s would pass this model's {share_s:.0f} s"})
                    continue
            try:
                row.update(_train_stack(model, K, B, shape, dev, warm=2 if dev.type == "cuda" else 1,
                                        steps=None if prof.timed_s else prof.min_steps, timed_s=prof.timed_s,
                                        max_steps=prof.max_steps))
                row["status"] = "ok"
                if row["peak_bytes_per_network"] is not None:
                    row["measured_over_estimate"] = row["peak_bytes_per_network"] / est
                last = row
            except packing.OutOfMemoryError as e:
                row["status"] = f"oom: {str(e).splitlines()[0][:200]}"
                _release()
            rows.append(row)
            out["rows"] = rows
            budget.save(out)
    out["rows"] = rows
    if dev.type == "cuda":
        out["planned_stack_this_gpu"] = {m: packing.auto_pack_size(m, PAPER_BATCH[m], dev) for m in NETS}
        out["planned_stack_a10g"] = {m: packing.auto_pack_size(m, PAPER_BATCH[m], dev, A10G_BYTES / _total(dev))
                                     for m in NETS}
    return out


def section_budget24(dev, prof, budget, data_dir) -> dict:
    """An A10G stand-in: the stack planned for 24 GB, trained for two steps under a 24 GB per-process budget."""
    out = {"budget_bytes": A10G_BYTES}
    if dev.type != "cuda":
        out.update(cuda=False, planned={m: packing.stack_size(m, PAPER_BATCH[m], A10G_BYTES) for m in NETS})
        return out
    total = _total(dev)
    frac = A10G_BYTES / total
    try:
        out["fraction"] = _set_budget(dev, A10G_BYTES)
        _release()
        out["process_cap_seen_by_packing"] = packing.memory_report(dev).process_cap
        for model in NETS:
            B = PAPER_BATCH[model]
            K = packing.auto_pack_size(model, B, dev, frac)
            row = {"planned_stack": K, "batch": B, "estimate_bytes_x2": packing.network_bytes(model, B)}
            if budget.left() < 30:
                row["status"] = "skipped: time"
            else:
                try:
                    row.update(_train_stack(model, K, B, NETS[model][1], dev, warm=1, steps=2))
                    row["status"] = "ok"
                    row["fits"] = row["peak_bytes"] <= A10G_BYTES
                except packing.OutOfMemoryError as e:
                    row.update(status="oom", fits=False, error=str(e).splitlines()[0][:200])
                    _release()
            out[model] = row
    finally:
        _set_budget(dev, None)
    return out


def section_oom(dev, prof, budget, data_dir) -> dict:
    """halve_on_oom on a real CUDA out-of-memory (All-CNN-C, batch 256, 16 networks under a 4 GB budget);
    on CPU, a simulated one (LeNet-5; groups of more than 2 raise)."""
    model, members = prof.oom_model, list(range(prof.oom_members))
    B, shape = prof.batch[model], prof.image[model]
    trained: list[int] = []

    def train_group(group):
        if dev.type != "cuda" and len(group) > 2:
            raise packing.OutOfMemoryError(f"simulated: {len(group)} networks do not fit")
        r = _train_stack(model, len(group), B, shape, dev, warm=1, steps=1)
        return r

    limit = packing.StackLimit(len(members), dev, 1.0)
    out = {"members": len(members), "model": model, "batch": B, "simulated": dev.type != "cuda"}
    try:
        if dev.type == "cuda":
            out["budget_bytes"] = prof.oom_budget_bytes
            _set_budget(dev, prof.oom_budget_bytes)
        groups = []
        for group, r in packing.halve_on_oom(train_group, members, limit):
            groups.append(len(group))
            trained.extend(group)
        out.update(groups=groups, final_stack=limit.size, events=limit.events,
                   ok=trained == members and limit.splits >= 1 and limit.size < len(members))
    finally:
        if dev.type == "cuda":
            _set_budget(dev, None)
            _release()
    return out


class _Cut(Exception):
    pass


def section_resume(dev, prof, budget, data_dir) -> dict:
    """A stacked pack cut inside a phase (run_trials' on_phase) and resumed from its state: bit-identical?"""
    from imbalance_core.trial import Progress, TrialConfig, run_trials
    iterations = prof.extra.get("resume_iterations", 400)
    methods = ("baseline", "ros", "la-loss", "cb-focal", "two-phase-ros")
    configs = [TrialConfig(dataset=prof.pack_dataset, data_dir=str(data_dir) if prof.pack_dataset == "mnist" else None,
                           imbalance="step", rho=100.0, mu=0.5, method=m, seed=0, iterations=iterations,
                           n_per_class=prof.pack_n_per_class, device=prof.device) for m in methods]
    timing = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}

    def pack(progress: Progress, cut=None):
        """The pack from `progress` (what run_trials' callbacks kept: a sweep's checkpoint), cut by an
        exception at on_phase's (phase, iterations done) == cut; the results, or None where it was cut."""
        seen = []

        def on_phase(group, state):
            progress.phase(group, state)
            seen.append((json.loads(group)[0], state.done))
            if cut is not None and seen[-1] == cut:
                raise _Cut()
        try:
            results = run_trials(configs, **progress.resume_args(), stack=True, cache_features=False,
                                 checkpoint_every_s=0, on_phase=on_phase, on_progress=progress.finished)
        except _Cut:
            return None, seen
        return [{k: v for k, v in _as_dict(r).items() if k not in timing} for r in results], seen

    t0 = time.perf_counter()
    through, seen = pack(Progress(configs))
    out = {"networks": len(configs), "methods": list(methods), "iterations": iterations,
           "through_seconds": time.perf_counter() - t0, "groups": sorted({g for g, _ in seen}), "cuts": []}
    budget.save(out)
    for cut in ((1, iterations // 3), (2, iterations // 2)):
        if budget.left() < 3 * out["through_seconds"] + 20:
            out["cuts"].append({"at": list(cut), "status": "skipped: time"})
            continue
        progress = Progress(configs)
        pack(progress, cut)
        resumed, after = pack(progress)
        diff = {c.method: sorted(k for k in r if r[k] != t.get(k)) for c, r, t in zip(configs, resumed, through)}
        out["cuts"].append({"at": list(cut), "resumed_at": list(after[0]) if after else None,
                            "identical": all(not d for d in diff.values()),
                            "differing_fields": {m: d for m, d in diff.items() if d},
                            "auc_through": [t["auc"] for t in through], "auc_resumed": [r["auc"] for r in resumed]})
        budget.save(out)
    done = [c for c in out["cuts"] if "identical" in c]
    out["ok"] = bool(done) and all(c["identical"] and c["resumed_at"] == [c["at"][0], c["at"][1] + 1] for c in done)
    return out


def load_cpu_results(path: Path = CPU_RESULTS) -> dict[tuple, dict]:
    """{(imbalance, rho, mu, method, level, seed): {"auc", "accuracy", ...}} of the CPU run (read only)."""
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            level = None if r["params.level"] in ("", "None") else float(r["params.level"])
            key = (r["params.imbalance"], float(r["params.rho"]), float(r["params.mu"]), r["params.method"], level,
                   int(r["params.seed"]))
            out[key] = {"auc": float(r["metrics.auc"]), "accuracy": float(r["metrics.accuracy"]),
                        "accuracy_thresholded": float(r["metrics.accuracy_thresholded"]),
                        "iterations": r["params.iterations"], "dataset": r["params.dataset"]}
    return out


def _key(c) -> tuple:
    return (c.imbalance, float(c.rho), float(c.mu), c.method, None if c.level is None else float(c.level), int(c.seed))


def pack_configs(prof: Profile, data_dir: Path, reference: dict, iterations=None, cells=None) -> list:
    from imbalance_core.trial import TrialConfig
    cells = prof.pack_cells if cells is None else cells
    device = "cuda" if prof.device == "cuda" else "cpu"
    if cells is None:                    # every network of the CPU run, in its order
        keys = sorted(reference, key=lambda k: (k[0], k[1], k[2], k[3], -1 if k[4] is None else k[4], k[5]))
    else:
        keys = [(imb, float(rho), float(mu), m, None, s) for imb, rho, mu in cells for s in prof.pack_seeds
                for m in prof.pack_methods]
    return [TrialConfig(dataset=prof.pack_dataset, data_dir=str(data_dir) if prof.pack_dataset == "mnist" else None,
                        imbalance=k[0], rho=k[1], mu=k[2], method=k[3],
                        level=k[4], seed=k[5], iterations=iterations, n_per_class=prof.pack_n_per_class,
                        device=device) for k in keys]


def _as_dict(r) -> dict:
    if hasattr(r, "to_dict"):
        return r.to_dict()
    return dict(r)


def run_pack(name, configs, dev, prof, reference, nbytes=None) -> dict:
    """One real pack through trial.run_trials; its AUCs against the CPU results of the same configs."""
    from imbalance_core.trial import run_trials
    out = {"name": name, "networks": len(configs), "iterations": configs[0].schedule.iterations,
           "budget_bytes": nbytes}
    try:
        if dev.type == "cuda":
            out["fraction"] = _set_budget(dev, nbytes)
            out["memory_before"] = packing.memory_report(dev).to_dict()       # the earlier packs' cache included
            out["planned_stack"] = packing.auto_pack_size(configs[0].model, configs[0].schedule.batch_size, dev,
                                                          release_cache=False)
        base = _peak_reset(dev)
        t0 = time.perf_counter()
        if dev.type == "cuda":
            results = run_trials(configs)
        else:                             # stacked on CPU too, two at a time, so the dry run covers that path
            try:
                results = run_trials(configs, stack=True, max_stack=2)
            except TypeError:             # the trainer's signature changed: its defaults
                results = run_trials(configs)
        out["seconds"] = time.perf_counter() - t0
        out["peak_bytes"] = _peak(dev, base)
    finally:
        if dev.type == "cuda":
            _set_budget(dev, None)
    rows = []
    for c, r in zip(configs, results):
        r = _as_dict(r)
        ref = reference.get(_key(c))
        rows.append({"imbalance": c.imbalance, "rho": c.rho, "mu": c.mu, "method": c.method, "level": c.level,
                     "seed": c.seed, "auc": r.get("auc"), "accuracy": r.get("accuracy"),
                     "accuracy_thresholded": r.get("accuracy_thresholded"), "train_seconds": r.get("train_seconds"),
                     "images_per_second": r.get("images_per_second"), "device": r.get("device"),
                     "cpu_auc": None if ref is None else ref["auc"],
                     "auc_minus_cpu": None if ref is None or r.get("auc") is None else r["auc"] - ref["auc"]})
    out["rows"] = rows
    deltas = [abs(x["auc_minus_cpu"]) for x in rows if x["auc_minus_cpu"] is not None]
    out["compared_with_cpu"] = len(deltas)
    out["comparable"] = out["iterations"] == 10_000 and prof.device == "cuda"
    if deltas:
        out.update(mean_abs_auc_diff=float(np.mean(deltas)), max_abs_auc_diff=float(np.max(deltas)),
                   mean_auc=float(np.mean([x["auc"] for x in rows])),
                   mean_cpu_auc=float(np.mean([x["cpu_auc"] for x in rows if x["cpu_auc"] is not None])))
    return out


def section_packs(dev, prof, budget, data_dir, reserve_s=150.0) -> dict:
    """Probe packs, then the pack at the paper's length on the whole GPU and under the A10G budget."""
    reference = load_cpu_results()
    out: dict = {"packs": [], "reference_rows": len(reference)}
    packs = out["packs"]
    full = pack_configs(prof, data_dir, reference, prof.pack_iterations)
    iterations = full[0].schedule.iterations
    if prof.probe_iterations:                  # time per iteration of this pack on this GPU
        probes = [run_pack(f"probe-{it}", pack_configs(prof, data_dir, reference, it), dev, prof, reference)
                  for it in prof.probe_iterations]  # the longer first: its one-time costs count in the slope
        packs.extend(probes)
        budget.save(out)
        (i0, p0), (i1, p1) = sorted(zip(prof.probe_iterations, (p["seconds"] for p in probes)))[:2]
        per_iter = max(1e-4, (p1 - p0) / (i1 - i0))
        predicted = p0 + per_iter * (iterations - i0)
        out["predicted_seconds"], out["seconds_per_iteration"] = predicted, per_iter
        left = budget.left() - reserve_s
        if 2 * predicted > left:               # fewer networks: the step mu 0.5 cells at rho 10 and 1000
            cells = (("step", 10.0, 0.5), ("step", 1000.0, 0.5))
            out["reduced_to_cells"] = cells
            full = pack_configs(prof, data_dir, reference, prof.pack_iterations, cells)
            if 2 * predicted > 1.5 * left:     # still too long (stacking fewer saves little): fewer iterations
                iterations = max(500, int((left / 2 - p0) / per_iter) // 500 * 500)
                out["shortened_to_iterations"] = iterations
                full = pack_configs(prof, data_dir, reference, iterations, cells)
    packs.append(run_pack("whole-gpu", full, dev, prof, reference))
    budget.save(out)
    if budget.left() < packs[-1]["seconds"] + 30:
        out["a10g"] = "skipped: time"
    else:
        packs.append(run_pack("a10g-24GB", full, dev, prof, reference, A10G_BYTES if dev.type == "cuda" else None))
        a, b = packs[-2]["rows"], packs[-1]["rows"]
        d = [abs(x["auc"] - y["auc"]) for x, y in zip(a, b) if x["auc"] is not None and y["auc"] is not None]
        out["gpu_runs_max_abs_auc_diff"] = max(d) if d else None
        out["gpu_runs_identical"] = all(x["auc"] == y["auc"] for x, y in zip(a, b))
    out["two_packs_in_one_process"] = len(packs)
    return out


SECTIONS = [("env", section_env), ("memory", section_memory), ("equality", section_equality), ("oom", section_oom),
            ("resume", section_resume), ("packs", section_packs), ("budget24", section_budget24), ("throughput", section_throughput)]


def run_check(out_path: Path, cpu: bool, budget_s: float, data_dir: Path, only: list[str] | None = None) -> int:
    prof = CPU_PROFILE if cpu else CUDA_PROFILE
    if not cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --cpu for the dry run)", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if not cpu else "cpu")
    if cpu:                               # tiny tensors: one thread (two oversubscribe a busy machine 20x)
        torch.set_num_threads(1)
    results = {"schema": 1, "mode": "cpu-dry-run" if cpu else "cuda", "budget_s": budget_s,
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": {}}
    current = [None]

    def save(partial: dict) -> None:              # a section's results so far, should the run be cut off
        results[current[0]] = {**partial, "status": "running (saved so far)"}
        results["sections"][current[0]] = "running"
        write_results(out_path, results)

    budget = Budget(budget_s, T_START, save)
    for name, fn in SECTIONS:
        if only and name not in only:
            continue
        current[0] = name
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ... ({budget.left():.0f} s left)", flush=True)
        try:
            if budget.left() < 10 and name != "env":
                body, status = {}, "skipped: time"
            else:
                body, status = fn(dev, prof, budget, data_dir), "ok"
        except Exception as e:  # noqa: BLE001 -- recorded; the other sections still run
            body, status = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}, "error"
            _release()
        body["status"], body["seconds"] = status, time.perf_counter() - t0
        results[name] = body
        results["sections"][name] = status
        results["wall_s"] = budget.elapsed()
        write_results(out_path, results)
        print(f"[gpu_check] {name}: {status} in {body['seconds']:.1f} s", flush=True)
    results["summary"] = summarize(results)
    write_results(out_path, results)
    print(json.dumps(results["summary"], indent=1))
    return 1 if any(s == "error" for s in results["sections"].values()) else 0


def summarize(r: dict) -> dict:
    s = {"sections": r["sections"], "wall_s": r.get("wall_s")}
    eq = r.get("equality", {})
    s["equality_ok"] = {m: {r: eq[m][r]["ok"] for r in eq[m] if r != "ok"} for m in NETS if m in eq}
    if "oom" in r:
        s["oom_ok"] = r["oom"].get("ok")
    if "resume" in r:
        s["resume_ok"] = r["resume"].get("ok")
    for p in r.get("packs", {}).get("packs", []):
        s[f"pack {p['name']}"] = {k: p.get(k) for k in ("networks", "iterations", "seconds", "planned_stack",
                                                         "peak_bytes", "mean_abs_auc_diff", "max_abs_auc_diff")}
    tp = r.get("throughput", {}).get("rows", [])
    s["throughput_images_per_s"] = {f"{x['model']} x{x['stack']}": round(x["images_per_s"])
                                    for x in tp if x.get("status") == "ok"}
    return s


def prepare(src: Path, dest: Path = GPU_DATA, ignore: bool = True) -> int:
    """Here, before a device run: MNIST into .gpu-data/ (git-ignored through .git/info/exclude when `ignore`,
    so the device run carries it), and a check that the CPU results the packs are compared with are in the
    tree (tracked: they travel with it)."""
    mnist = src / "MNIST"
    if not (mnist / "raw").is_dir():
        print(f"--prepare: expected MNIST's idx files in {mnist}/raw", file=sys.stderr)
        return 2
    if (dest / "MNIST").exists():
        shutil.rmtree(dest / "MNIST")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(mnist, dest / "MNIST")
    exclude = ROOT / ".git" / "info" / "exclude"
    if ignore and exclude.parent.is_dir():
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if "/.gpu-data/" not in lines:
            with open(exclude, "a") as f:
                f.write("/.gpu-data/\n")
    n = len(load_cpu_results())
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"--prepare: {dest} ({size / 1e6:.1f} MB), CPU results: {n} networks in {CPU_RESULTS.relative_to(ROOT)}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")) / "gpu_check.json")
    ap.add_argument("--cpu", action="store_true", help="the dry run: tiny sizes on the CPU (seconds)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="the run's time budget (sections adapt)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="the folder holding MNIST/ (default: .gpu-data if prepared, else ../shared/data)")
    ap.add_argument("--prepare", action="store_true", help="copy MNIST into .gpu-data/ for a device run")
    ap.add_argument("--sections", nargs="+", choices=[n for n, _ in SECTIONS], default=None)
    a = ap.parse_args(argv)
    shared = ROOT.parent / "shared" / "data"
    if a.prepare:
        return prepare(a.data_dir or shared)
    data_dir = a.data_dir or (GPU_DATA if (GPU_DATA / "MNIST").is_dir() else shared)
    return run_check(a.out, a.cpu, a.budget_s, data_dir, a.sections)


if __name__ == "__main__":
    sys.exit(main())
