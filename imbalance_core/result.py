"""The result of one trained network: `NetworkResult`, and every metric name, defined once.

`imbalance_core.trial.run_trials` returns one `NetworkResult` per network. `to_dict()` is the plain,
JSON-serialisable result dict (the CLI's output, a pack checkpoint, what Tune ships, MLflow's
`result.json`); `from_dict` reads one back. A `NetworkResult` also reads as that dict (`r["auc"]`,
`set(r)`, `{**r}`), so code written against result dicts keeps working.

The metric names below are the only place they are spelled: `metrics.py` computes them, the sweep's
MLflow tracker logs them (`mlflow_metrics`), the report and findings read them. The contract section of
docs/SWEEP_CONTRACT.md is rendered from this module (`python -m imbalance_core.result --contract`,
`--write` to update the file; tests/test_result.py fails when the two disagree).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------- metric names

AUC = "auc"
ACCURACY = "accuracy"
ACCURACY_THRESHOLDED = "accuracy_thresholded"
RECALL = "recall"
RECALL_THRESHOLDED = "recall_thresholded"
LA_TAUS = (0.5, 1.0, 1.5, 2.0)              # logit adjustment: log p_c - tau log pi_c
TAU_NORM_TAUS = (0.25, 0.5, 1.0)            # tau-normalised classifier: f . w_c / ||w_c||^tau
POSTHOC_KINDS = ("la", "taunorm")
BEST_POSTHOC = "accuracy_posthoc_best"
POSTHOC_PREFIX = "accuracy_posthoc_"
RECALL_POSTHOC_PREFIX = "recall_posthoc_"
# The test-set metrics the report tabulates (mean, std, min, max over seeds).
HEADLINE = (AUC, ACCURACY, ACCURACY_THRESHOLDED, BEST_POSTHOC)


def posthoc_name(kind: str, tau: float, metric: str = ACCURACY) -> str:
    """The metric name of a post-hoc correction: kind 'la' (logit adjustment) or 'taunorm'."""
    if kind not in POSTHOC_KINDS:
        raise ValueError(f"post-hoc kind {kind!r} is unknown; choose la or taunorm")
    return f"{metric}_posthoc_{kind}{'_tau' if kind == 'la' else ''}{tau:g}"


def per_class_name(name: str, c: int) -> str:
    """The MLflow metric of class c of a per-class list (recall_3, recall_posthoc_la_tau1_3)."""
    return f"{name}_{c}"


# --------------------------------------------------------------------------- the result

# How a field reaches MLflow (field metadata "mlflow"): "metric" = one metric of that name, "per_class" =
# one metric per class (per_class_name), "param" = a run param, "input" = the run's dataset input,
# "time" = the run's start/end time, "tag" = a run tag. Every field is in result.json.
def _f(doc: str, mlflow: str = "", default=dataclasses.MISSING):
    kw = {} if default is dataclasses.MISSING else {"default": default}
    return field(metadata={"doc": doc, "mlflow": mlflow}, **kw)


@dataclass(eq=True)
class NetworkResult(Mapping):
    """One trained network's test-set metrics and the facts of its training (metrics x100)."""
    auc: float = _f("multi-class ROC AUC: one-vs-rest per class, macro mean, x100", "metric")
    accuracy: float = _f("argmax of the test scores, x100", "metric")
    accuracy_thresholded: float = _f("argmax of score_c / prior_c (the pre-sampling training priors), x100", "metric")
    recall: list[float] = _f("per-class recall of the plain argmax, x100", "per_class")
    recall_thresholded: list[float] = _f("per-class recall of the thresholded argmax, x100", "per_class")
    confusion_matrix: list[list[int]] = _f("rows = true class, columns = predicted (plain argmax)")
    confusion_matrix_thresholded: list[list[int]] = _f("the same for the thresholded argmax")
    posthoc: dict[str, float | list[float]] = _f(
        "the post-hoc corrections of `metrics.posthoc`, flattened into the dict: for each tau of LA_TAUS "
        "`accuracy_posthoc_la_tau{tau}` and `recall_posthoc_la_tau{tau}` (per class), for LeNet-5 with a linear "
        "head also `accuracy_posthoc_taunorm{tau}` and `recall_posthoc_taunorm{tau}` for each tau of "
        "TAU_NORM_TAUS", "posthoc")
    accuracy_posthoc_best: float = _f("the best of the plain accuracy and the post-hoc accuracies, chosen on "
                                      "the test set: an oracle bound", "metric")
    train_examples: int = _f("size of the imbalanced training subset", "metric")
    subset_digest: str = _f("sha256 hex of the training subset's indices (int64 little-endian)", "input")
    class_counts: list[int] = _f("the subset's examples per class (index = label)")
    sampled_counts: list[int] = _f("per class, one epoch of phase 1's sampler (ROS/RUS change it)")
    epoch_examples: int = _f("sum of sampled_counts", "metric")
    iterations: int = _f("SGD iterations of phase 1")
    finetune_iterations: int = _f("SGD iterations of phase 2 (0 for one-phase methods)")
    finetune_on: str = _f('phase 2 ran on "cached features" or the "whole network"; "" for one-phase methods')
    batch_size: int = _f("the effective batch size", "param")
    base_lr: float = _f("the effective base learning rate", "param")
    train_seconds: float = _f("this network's share of the pack's training time (s)", "metric")
    started_at: float = _f("wall clock (`time.time()` s) when its training loop began", "time")
    ended_at: float = _f("... and ended (two-phase: the end of phase 2)", "time")
    images_per_second: float = _f("phase 1's training throughput", "metric")
    final_loss: float = _f("the training loss at the last iteration (of the last phase)", "metric")
    pack_size: int = _f("networks in the pack that trained it")
    pack_seconds: float = _f("from the pack's start to this network's end (s)")
    device: str = _f('"cpu", "cuda", "cuda:N"')
    loader: str = _f("the training loader backend: tensor, torch or ffcv")
    model: str = _f("lenet5, allcnnc or resnet10", "param")
    test_examples: int = _f("size of the balanced test set")
    data_digest: str = _f("the dataset's identity: `datasets.digest` (its name and what was read, not the folder it "
                          "was read from); empty in results from before it was recorded", "param", default="")
    stack_size: int | None = _f("networks trained at once in its training group, vmap-stacked (1: alone); for a "
                                "two-phase network the smaller of its phases'; None in results from before it "
                                "was recorded", "param", default=None)
    oom_splits: int | None = _f("times its pack halved a stack after running out of GPU memory "
                                "(packing.halve_on_oom)", "param", default=None)
    tf32: str = _f('"off": FP32 convolutions and matmuls (the default; always on CPU), "on": TF32 allowed on CUDA '
                   "(numerics.configure)", "param", default="")
    device_name: str = _f("the GPU's name, or the CPU's model", "param", default="")
    torch_version: str = _f("torch.__version__ of the worker", "param", default="")
    cuda_version: str = _f("torch.version.cuda of its torch build (\"\" for a CPU-only build)", "param", default="")
    node_id: str | None = _f("the Ray node that trained it (set by the sweep's trainable; absent outside a "
                             "sweep)", "tag", default=None)

    # ----------------------------------------------------------------- the plain dict

    def to_dict(self) -> dict:
        """The result dict: every field in order, `posthoc` flattened in its place, node_id only when set."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "posthoc":
                out.update(v)
            elif f.name != "node_id" or v is not None:
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "NetworkResult":
        """The inverse of to_dict (a NetworkResult is returned as it is)."""
        if isinstance(d, NetworkResult):
            return d
        names = {f.name for f in dataclasses.fields(cls)} - {"posthoc"}
        post = {k: v for k, v in d.items() if is_posthoc(k) and k != BEST_POSTHOC}
        unknown = sorted(set(d) - names - set(post))
        if unknown:
            raise ValueError(f"unknown result keys {unknown}")
        return cls(posthoc=post, **{k: v for k, v in d.items() if k in names})

    # a read-only view as the result dict
    def __getitem__(self, key: str):
        if key in self.posthoc:
            return self.posthoc[key]
        if key in _PLAIN and (key != "node_id" or self.node_id is not None):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    # ----------------------------------------------------------------- MLflow

    @classmethod
    def mlflow_metric_names(cls, num_classes: int, taunorm: bool) -> set[str]:
        """Every MLflow metric of a network, as the fields declare them (taunorm: the tau-normalised ones)."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata["mlflow"] == "metric"}
        per_class = [f.name for f in dataclasses.fields(cls) if f.metadata["mlflow"] == "per_class"]
        for kind, taus in (("la", LA_TAUS), ("taunorm", TAU_NORM_TAUS if taunorm else ())):
            for tau in taus:
                names.add(posthoc_name(kind, tau))
                per_class.append(posthoc_name(kind, tau, RECALL))
        return names | {per_class_name(n, c) for n in per_class for c in range(num_classes)}


_PLAIN = frozenset(f.name for f in dataclasses.fields(NetworkResult)) - {"posthoc"}
MLFLOW_SCALARS = tuple(f.name for f in dataclasses.fields(NetworkResult) if f.metadata["mlflow"] == "metric"
                       and f.name != BEST_POSTHOC)
PER_CLASS = tuple(f.name for f in dataclasses.fields(NetworkResult) if f.metadata["mlflow"] == "per_class")
OPTIONAL_FIELDS = frozenset(f.name for f in dataclasses.fields(NetworkResult) if f.default is not dataclasses.MISSING)
RESULT_PARAMS = tuple(f.name for f in dataclasses.fields(NetworkResult) if f.metadata["mlflow"] == "param")


def is_posthoc(key: str) -> bool:
    return key.startswith((POSTHOC_PREFIX, RECALL_POSTHOC_PREFIX))


def mlflow_metrics(result: Mapping) -> dict[str, float]:
    """The MLflow metrics of one result (a NetworkResult or its dict): its scalar metrics, every post-hoc
    accuracy, and one metric per class of every per-class recall."""
    r = result.to_dict() if isinstance(result, NetworkResult) else result
    metrics = {k: float(r[k]) for k in MLFLOW_SCALARS}
    metrics.update({k: float(v) for k, v in r.items() if k.startswith(POSTHOC_PREFIX)})
    for name in (*PER_CLASS, *(k for k in r if k.startswith(RECALL_POSTHOC_PREFIX))):
        metrics.update({per_class_name(name, c): float(v) for c, v in enumerate(r[name])})
    return metrics


# --------------------------------------------------------------------------- the contract (docs/SWEEP_CONTRACT.md)

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "SWEEP_CONTRACT.md"
BEGIN, END = "<!-- BEGIN generated {}: python -m imbalance_core.result --contract -->", "<!-- END generated {} -->"


def _type(f) -> str:
    return str(f.type).replace("typing.", "")


def contract_sections() -> dict[str, str]:
    """The generated parts of docs/SWEEP_CONTRACT.md: the result keys and the MLflow metrics."""
    keys = ["Result dict keys (`imbalance_core.result.NetworkResult.to_dict()`, in this order; x100 = percent):"]
    for f in dataclasses.fields(NetworkResult):
        name = "post-hoc metrics" if f.name == "posthoc" else f"`{f.name}`"
        keys.append(f"- {name} ({_type(f)}): {f.metadata['doc']}")
    scalars = ", ".join(f"`{n}`" for n in MLFLOW_SCALARS)
    per_class = " and ".join(f"`{per_class_name(n, '{c}')}`" for n in PER_CLASS)
    metrics = (f"- metrics (`imbalance_core.result.mlflow_metrics`): {scalars}, {per_class} for each class c, "
               f"every `{POSTHOC_PREFIX}*` of the result (`{BEST_POSTHOC}` included) and "
               f"`{RECALL_POSTHOC_PREFIX}*_{{c}}` for each class c.")
    return {"result-keys": "\n".join(keys), "mlflow-metrics": metrics}


def render(text: str) -> str:
    """`text` (the contract) with each generated section replaced by its current rendering."""
    for name, body in contract_sections().items():
        begin, end = BEGIN.format(name), END.format(name)
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"the contract has no section {begin} ... {end}")
        text = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m imbalance_core.result", description=__doc__.split("\n\n")[0])
    p.add_argument("--contract", action="store_true", help="print the generated sections of the contract")
    p.add_argument("--write", action="store_true", help=f"rewrite those sections of {CONTRACT}")
    a = p.parse_args(argv)
    if a.write:
        CONTRACT.write_text(render(CONTRACT.read_text()))
    else:
        for name, body in contract_sections().items():
            print(f"{BEGIN.format(name)}\n{body}\n{END.format(name)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
