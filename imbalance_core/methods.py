"""The method registry: one typed spec per training method; every other module reads this list.

A method is one or two training phases. A phase says what the network trains on (a sampler of
`sampling.py`), with which loss (`losses.py`), which layers train, at what lr scale, and whether the
last layer is re-initialised first. Thresholding and the other post-hoc corrections are not methods:
they are metrics of every trained network (`metrics.py`).

A method's hyper-parameters are fields of its spec (`params`, with defaults); a grid sweeps them by
naming the method with overrides, `NAME:key=value,key=value` (e.g. `cb-focal:gamma=2`): the name is what
MLflow and the report show, so each setting is its own row.

Adding a method = adding one `MethodSpec` to `SPECS` (plus its tests); grids, CLI, report and findings
read it from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .losses import LOSSES
from .sampling import SAMPLERS


@dataclass(frozen=True)
class Phase:
    """One training phase of a method."""
    sampler: str = "baseline"          # sampling.SAMPLERS; "class-balanced" = weighted, each class equally likely
    loss: str = "ce"                   # losses.LOSSES
    only_last: bool = False            # train only the model's `last_layers`
    lr_scale: float = 1.0              # x the schedule's base lr
    reinit_last: bool = False          # re-initialise the last layer(s) before this phase (cRT)


# Ranges of the hyper-parameters a method may take: name -> (low, high, low inclusive, high inclusive)
RANGES = {
    "tau": (0.0, 10.0, True, True),
    "beta": (0.0, 1.0, True, False),
    "gamma": (0.0, math.inf, True, False),
    "max_margin": (0.0, math.inf, False, False),
    "scale": (0.0, math.inf, False, False),
    "drw_fraction": (0.0, 1.0, True, True),
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    phases: tuple[Phase, ...]
    family: str                        # "paper" | "partial" | "beyond": how the report groups it
    description: str = ""
    params: tuple[tuple[str, float], ...] = ()   # hyper-parameters and their defaults
    head: str = "linear"               # "cosine": the last layer is models.NormedLinear (LDAM)
    needs_level: bool = False          # partial sampling: TrialConfig.level is the imbalance ratio left
    label: str = ""                    # the report's legend; default: the name

    @property
    def base(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def param_dict(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def two_phase(self) -> bool:
        return len(self.phases) == 2

    @property
    def display(self) -> str:
        return self.label or self.name


SPECS: dict[str, MethodSpec] = {s.name: s for s in (
    # the paper's five training regimes (STUDY.md, "Methods")
    MethodSpec("baseline", (Phase("baseline"),), "paper", "the imbalanced subset as it is", label="baseline"),
    MethodSpec("ros", (Phase("ros"),), "paper", "every class oversampled to the largest", label="ROS"),
    MethodSpec("rus", (Phase("rus"),), "paper", "every class undersampled to the smallest", label="RUS"),
    MethodSpec("two-phase-ros", (Phase("ros"), Phase("baseline", only_last=True, lr_scale=0.1)), "paper",
               "ROS, then the last layer(s) fine-tuned on the imbalanced subset at lr x 0.1", label="two-phase ROS"),
    MethodSpec("two-phase-rus", (Phase("rus"), Phase("baseline", only_last=True, lr_scale=0.1)), "paper",
               "RUS, then the last layer(s) fine-tuned on the imbalanced subset at lr x 0.1", label="two-phase RUS"),
    MethodSpec("partial-ros", (Phase("partial-ros"),), "partial", "ROS to an intermediate imbalance `level`",
               needs_level=True, label="partial ROS"),
    MethodSpec("partial-rus", (Phase("partial-rus"),), "partial", "RUS to an intermediate imbalance `level`",
               needs_level=True, label="partial RUS"),
    # the methods that followed the paper (STUDY.md, "Beyond the paper")
    MethodSpec("la-loss", (Phase("baseline", loss="la"),), "beyond",
               "logit-adjusted cross-entropy, logits + tau log(prior)", params=(("tau", 1.0),), label="LA loss"),
    MethodSpec("cb-focal", (Phase("baseline", loss="cb-focal"),), "beyond",
               "class-balanced (effective number) softmax focal loss", params=(("beta", 0.9999), ("gamma", 1.0)),
               label="CB focal"),
    MethodSpec("ldam-drw", (Phase("baseline", loss="ldam-drw"),), "beyond",
               "LDAM margins on a cosine classifier, class-balanced re-weighting for the last drw_fraction",
               params=(("max_margin", 0.5), ("scale", 30.0), ("drw_fraction", 0.2), ("beta", 0.9999)),
               head="cosine", label="LDAM-DRW"),
    MethodSpec("crt", (Phase("baseline"), Phase("class-balanced", only_last=True, reinit_last=True)), "beyond",
               "baseline network, then its last layer re-initialised and retrained with class-balanced sampling",
               label="cRT"),
)}
PAPER = tuple(n for n, s in SPECS.items() if s.family == "paper")
ORDER = tuple(SPECS)                  # the report's order


def _parse_value(name: str, key: str, raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"method {name!r}: {key}={raw!r} is not a number") from None
    lo, hi, lo_in, hi_in = RANGES[key]
    ok = (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi) and not math.isnan(v)
    if not ok:
        raise ValueError(f"method {name!r}: {key}={v:g} is out of range; allowed "
                         f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}")
    return v


def get(name: str) -> MethodSpec:
    """The spec of `name`, with `:key=value` overrides applied and range-checked (ValueError naming the value)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method {name!r} is unknown; choose one of {', '.join(SPECS)}")
    base, _, args = name.partition(":")
    if base not in SPECS:
        raise ValueError(f"method {name!r} is unknown; choose one of {', '.join(SPECS)}")
    spec = SPECS[base]
    if not args:
        return spec
    params = spec.param_dict
    for part in args.split(","):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or key not in params:
            raise ValueError(f"method {name!r}: {part!r} is not a hyper-parameter of {base!r}; it has "
                             f"{', '.join(f'{k}={v:g}' for k, v in params.items()) or 'none'}")
        params[key] = _parse_value(name, key, raw.strip())
    return replace(spec, name=name, params=tuple(params.items()), label=f"{spec.display} ({args})")


def phase1_key(spec: MethodSpec) -> tuple:
    """Two methods whose networks are identical through phase 1 share it in a pack (two-phase ROS and ROS,
    cRT and baseline): the phase, the hyper-parameters its loss reads and the head."""
    p = spec.phases[0]
    loss_params = spec.params if p.loss != "ce" else ()
    return (p, loss_params, spec.head)


def names(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, s in SPECS.items() if family is None or s.family == family)


__all__ = ["Phase", "MethodSpec", "SPECS", "PAPER", "ORDER", "RANGES", "get", "phase1_key", "names",
           "LOSSES", "SAMPLERS"]
