"""A rehearsal's results (`--rehearse`): what `run_trials` gives, with synthetic values and nothing trained.

`rehearse_trials` keeps run_trials' contract (the same arguments, the steps a stacked pack reports) and
`synthetic_result` gives, per network, a result of exactly the real shape: every key, list and matrix, from
the dataset's real labels, subset and sampling plan and the real metric functions run on synthetic scores.
Per worker process, a dataset's template (`_template`), digest (`_data_digest`) and each subset's facts
(`_subset_facts`) are computed once. `sweeps.trainable.rehearse_pack` runs it as a Tune trial.
"""
from __future__ import annotations

import functools

from imbalance_core.result import ACCURACY, ACCURACY_THRESHOLDED, AUC
from imbalance_core.trial import TrialConfig

_TEMPLATES: dict[str, tuple] = {}     # dataset -> (train labels, test labels, metrics of synthetic scores)


def _template(c: TrialConfig) -> tuple:
    """Per dataset and worker process, once: its real labels and the real metric functions (evaluate,
    posthoc) run on synthetic test scores, so that every matrix and list has the real shape."""
    key = f"{c.dataset}:{c.data_dir}"
    if key not in _TEMPLATES:
        import numpy as np

        from imbalance_core import datasets as D
        from imbalance_core.metrics import evaluate, posthoc
        ds = D.load_dataset(c.dataset, c.data_dir)
        y_train, y_test = np.asarray(ds.train_y), np.asarray(ds.test_y)
        C = ds.num_classes
        rng = np.random.default_rng(0)
        z = rng.normal(size=(len(y_test), C))
        z[np.arange(len(y_test)), y_test] += 2.5
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        priors = np.full(C, 1.0 / C)
        m = evaluate(y_test, p, priors)
        plain = posthoc(y_test, p, priors)
        with_features = posthoc(y_test, p, priors, rng.normal(size=(len(y_test), 8)), rng.normal(size=(C, 8)))
        _TEMPLATES[key] = (y_train, y_test, m, plain, with_features)
    return _TEMPLATES[key]


@functools.lru_cache(maxsize=8)
def _data_digest(dataset: str, data_dir: str | None) -> str:
    from imbalance_core import datasets as D
    return D.digest(D.load_dataset(dataset, data_dir))


@functools.lru_cache(maxsize=64)
def _subset_facts(dataset: str, data_dir: str | None, imbalance: str, n: int, rho: float, mu: float, seed: int,
                  sampler: str, level: float | None) -> tuple:
    """(size, sha256 of the indices, class counts, sampled counts) of a training subset: the same for every
    method of a cell and seed (a pack holds several), so drawn once per worker."""
    from imbalance_core.imbalance import make_subset
    from imbalance_core.sampling import SamplingPlan
    y_train = _template(TrialConfig(dataset=dataset, data_dir=data_dir))[0]
    sub = make_subset(y_train, dataset, imbalance, n, rho, mu, seed)
    return (int(len(sub.indices)), sub.digest, list(sub.counts),
            SamplingPlan(sub, y_train, sampler=sampler, level=level).counts)


def synthetic_result(c: TrialConfig, node_time: float) -> dict:
    """A result of exactly the shape run_trials gives for `c` (every key, list and matrix), with synthetic
    values: AUC and accuracies fall with log rho and vary by method and seed (deterministic)."""
    import math
    import zlib

    import numpy as np

    from imbalance_core import methods as M
    from imbalance_core import specs as S
    from imbalance_core.models import MODELS
    y_train, y_test, m, plain, with_features = _template(c)
    spec = M.get(c.method)
    size, digest, counts, sampled = _subset_facts(c.dataset, c.data_dir, c.imbalance, c.n, c.rho, c.mu, c.seed,
                                                  spec.phases[0].sampler, c.level)
    rng = np.random.default_rng([zlib.crc32(f"{c.method}/{c.imbalance}/{c.level}".encode()), c.seed, int(c.rho),
                                 int(100 * c.mu)])
    drop = math.log10(max(c.rho, 1.0)) * (1.0 + (zlib.crc32(c.method.encode()) % 7) / 7)
    r = {k: (list(map(list, v)) if k.startswith("confusion") else list(v)) if isinstance(v, list) else v
         for k, v in m.items()}
    r[AUC] = float(min(100.0, 99.5 - drop + rng.normal(0, 0.3)))
    r[ACCURACY] = float(max(0.0, 98.0 - 8 * drop + rng.normal(0, 1.0)))
    r[ACCURACY_THRESHOLDED] = float(max(0.0, 98.0 - 4 * drop + rng.normal(0, 1.0)))
    # tau-norm needs the network's test features at hand: a linear head and the test set in memory (trial.py)
    linear_tau = spec.head == "linear" and hasattr(MODELS[c.model], "features") and S.get(c.dataset).in_memory
    for k, v in (with_features if linear_tau else plain).items():
        r[k] = list(v) if isinstance(v, list) else float(max(0.0, r[ACCURACY] + rng.normal(0, 1.0)))
    two = spec.two_phase
    iterations = c.schedule.iterations
    r.update({
        "train_examples": size,
        "subset_digest": digest,
        "data_digest": _data_digest(c.dataset, c.data_dir),
        "class_counts": list(counts),
        "sampled_counts": list(sampled),
        "epoch_examples": int(sum(sampled)),
        "iterations": iterations,
        "finetune_iterations": iterations if two else 0,
        "finetune_on": "cached features" if two and spec.phases[-1].only_last else ("whole network" if two else ""),
        "batch_size": c.schedule.batch_size,
        "base_lr": c.schedule.base_lr,
        "train_seconds": 0.0,
        "started_at": node_time,
        "ended_at": node_time,
        "images_per_second": 0.0,
        "final_loss": float(abs(rng.normal(0.05, 0.02))),
        "device": "rehearsal",
        "loader": "rehearsal",
        "model": c.model,
        "test_examples": int(len(y_test)),
        "stack_size": 1,
        "oom_splits": 0,
        "tf32": "off",
        "device_name": "rehearsal",
        "torch_version": "rehearsal",
        "cuda_version": "",
    })
    return r


def rehearse_trials(configs: list[TrialConfig], *, done: dict | None = None,
                    phase1: dict[str, dict] | None = None, on_progress=None, stack: bool = False,
                    max_stack: int | None = None, gpu_fraction: float = 1.0, allow_tf32: bool = False,
                    checkpoint_every_s: float | None = None, on_phase=None, in_phase: dict | None = None) -> list:
    """run_trials' contract without training: one synthetic NetworkResult per network, reported in the steps
    a stacked pack reports (one-phase networks after phase 1, two-phase networks after phase 2)."""
    import time

    from imbalance_core import methods as M
    from imbalance_core.result import NetworkResult
    done = {int(i): NetworkResult.from_dict(r) for i, r in (done or {}).items()}
    t0 = time.perf_counter()
    todo = [i for i in range(len(configs)) if i not in done]
    for two in (False, True):
        step = {}
        for i in todo:
            if M.get(configs[i].method).two_phase == two:
                r = synthetic_result(configs[i], time.time())
                r.update(pack_size=len(configs), pack_seconds=time.perf_counter() - t0)
                step[i] = NetworkResult.from_dict(r)
        done.update(step)
        if step and on_progress is not None:
            on_progress(step, {})
    return [done[i] for i in range(len(configs))]
