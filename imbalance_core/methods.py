"""The method registry: one typed spec per training method; every other module reads this list.

A method is one or two training phases. A phase says what the network trains on (a sampler of
`sampling.py`, at the config's `level` where the sampler takes one), with which loss (`losses.py`), which
layers train, at what lr scale, and whether the last layer is re-initialised first; every field is honoured
in both phases. Phase 2 starts from the network phase 1 trained. Thresholding and the other post-hoc
corrections are not methods: they are metrics of every trained network (`metrics.py`).

A method's hyper-parameters are fields of its spec (`params`, with defaults): exactly those its phases'
losses read (`losses.LOSSES`: each loss names its hyper-parameters and their ranges); a grid sweeps them by
naming the method with overrides, `NAME:key=value,key=value` (e.g. `cb-focal:gamma=2`): the name is what
MLflow and the report show, so each setting is its own row. A method whose sampler takes a `level`
(partial ROS/RUS) `needs_level`: grids sweep it over their levels, whatever its name.

Adding a method = adding one `MethodSpec` to `SPECS` under its name (plus its tests); grids, CLI, report
and findings read it from here. `validate` (run by `get`, so before anything trains) refuses a spec that
asks for something the trainer does not do, naming the value and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from . import losses as L
from .losses import LOSSES
from .sampling import LEVEL_SAMPLERS, SAMPLERS

MAX_PHASES = 2                         # a phase-1 network, then at most one phase 2 that starts from it
FAMILIES = ("paper", "partial", "beyond")
HEADS = ("linear", "cosine")


@dataclass(frozen=True)
class Phase:
    """One training phase of a method."""
    sampler: str = "baseline"          # sampling.SAMPLERS; "class-balanced" = weighted, each class equally likely
    loss: str = "ce"                   # losses.LOSSES
    only_last: bool = False            # train only the model's `last_layers`
    lr_scale: float = 1.0              # x the schedule's base lr
    reinit_last: bool = False          # re-initialise the last layer(s) before this phase (cRT)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    phases: tuple[Phase, ...]
    family: str                        # "paper" | "partial" | "beyond": how the report groups it
    description: str = ""
    params: tuple[tuple[str, float], ...] = ()   # hyper-parameters (those its losses read) and their defaults
    head: str = "linear"               # "cosine": the last layer is models.NormedLinear (LDAM)
    # a phase samples to a level (sampling.LEVEL_SAMPLERS): TrialConfig.level is the imbalance ratio left, and
    # grids sweep the method over levels. Derived from the phases when not given (given, it must agree).
    needs_level: bool | None = None
    label: str = ""                    # the report's legend; default: the name

    def __post_init__(self):
        if self.needs_level is None:
            object.__setattr__(self, "needs_level", self.samples_to_level)

    @property
    def samples_to_level(self) -> bool:
        return any(p.sampler in LEVEL_SAMPLERS for p in self.phases)

    @property
    def base(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def param_dict(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def two_phase(self) -> bool:
        """A phase 2 follows phase 1 (validate: never more than two phases)."""
        return len(self.phases) > 1

    @property
    def display(self) -> str:
        return self.label or self.name

    def loss_params(self, phase: Phase) -> dict[str, float]:
        """The hyper-parameters the loss of `phase` reads, with this spec's values."""
        return {k: v for k, v in self.params if k in L.get(phase.loss).params}


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
               label="partial ROS"),
    MethodSpec("partial-rus", (Phase("partial-rus"),), "partial", "RUS to an intermediate imbalance `level`",
               label="partial RUS"),
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


class _Names(Sequence):
    """The names of SPECS in registry order, read when used (a method registered later is in it)."""

    def __getitem__(self, i):
        return tuple(SPECS)[i]

    def __len__(self) -> int:
        return len(SPECS)

    def __repr__(self) -> str:
        return repr(tuple(SPECS))


ORDER: Sequence[str] = _Names()        # the report's order


def _ranges(spec: MethodSpec) -> dict[str, L.Range]:
    """Each hyper-parameter that a loss of `spec` reads, and its range."""
    return {k: r for p in spec.phases if p.loss in LOSSES for k, r in LOSSES[p.loss].params.items()}


def _check_value(name: str, key: str, v: float, allowed: L.Range) -> float:
    if v not in allowed:
        raise ValueError(f"method {name!r}: {key}={v:g} is out of range; allowed {allowed}")
    return v


def _parse_value(name: str, key: str, raw: str, allowed: L.Range) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"method {name!r}: {key}={raw!r} is not a number") from None
    return _check_value(name, key, v, allowed)


def _check_phase(name: str, n: int, p: Phase) -> None:
    where = f"method {name!r}, phase {n}"
    if not isinstance(p, Phase):
        raise ValueError(f"{where}: {p!r} is not a methods.Phase")
    if p.sampler not in SAMPLERS or p.sampler == "weighted":
        raise ValueError(f"{where}: sampler={p.sampler!r} is not allowed; choose one of "
                         f"{', '.join(s for s in SAMPLERS if s != 'weighted')} ('weighted' needs class weights, "
                         f"which a phase does not give: 'class-balanced' is weighted with 1 / n_c)")
    if p.loss not in LOSSES:
        raise ValueError(f"{where}: loss={p.loss!r} is unknown; choose one of {', '.join(LOSSES)} "
                         f"(a new loss is one @losses.loss entry)")
    for field in ("only_last", "reinit_last"):
        if not isinstance(getattr(p, field), bool):
            raise ValueError(f"{where}: {field}={getattr(p, field)!r} is not allowed; need True or False")
    if isinstance(p.lr_scale, bool) or not isinstance(p.lr_scale, (int, float)) or not (
            math.isfinite(p.lr_scale) and p.lr_scale > 0):
        raise ValueError(f"{where}: lr_scale={p.lr_scale!r} is not allowed; need a finite number > 0")


def _check_params(spec: MethodSpec) -> None:
    ranges = _ranges(spec)
    given = spec.param_dict
    for key, v in given.items():
        if key not in ranges:
            raise ValueError(f"method {spec.name!r}: hyper-parameter {key}={v:g} is read by none of its phases' "
                             f"losses ({', '.join(p.loss for p in spec.phases)}: they read "
                             f"{', '.join(ranges) or 'none'})")
        _check_value(spec.name, key, float(v), ranges[key])
    missing = [k for k in ranges if k not in given]
    if missing:
        raise ValueError(f"method {spec.name!r}: its losses read {', '.join(missing)}, which its params do not "
                         f"give; add ({missing[0]!r}, default) to params")


def validate(spec: MethodSpec) -> MethodSpec:
    """`spec` if the trainer does everything it asks (every Phase field in every phase), else ValueError
    naming the value and what is allowed: 1 or 2 phases, known samplers and losses, the hyper-parameters its
    losses read (no more, no fewer, in range), a known head and family, needs_level as its samplers say."""
    name = spec.name
    if not isinstance(name, str) or not spec.base:
        raise ValueError(f"method name {name!r} is not allowed: need a non-empty string")
    if not isinstance(spec.phases, tuple):
        raise ValueError(f"method {name!r}: phases={spec.phases!r} is not allowed; need a tuple of methods.Phase")
    if not 1 <= len(spec.phases) <= MAX_PHASES:
        raise ValueError(f"method {name!r} has {len(spec.phases)} phases; 1 or {MAX_PHASES} are supported (phase 1, "
                         f"then at most one phase 2 that starts from the network phase 1 trained)")
    for n, p in enumerate(spec.phases, 1):
        _check_phase(name, n, p)
    _check_params(spec)
    if spec.head not in HEADS:
        raise ValueError(f"method {name!r}: head={spec.head!r} is unknown; choose one of {', '.join(HEADS)}")
    if spec.family not in FAMILIES:
        raise ValueError(f"method {name!r}: family={spec.family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    if spec.needs_level != spec.samples_to_level:
        raise ValueError(f"method {name!r}: needs_level={spec.needs_level!r} disagrees with its samplers "
                         f"({', '.join(p.sampler for p in spec.phases)}; the samplers that take a level: "
                         f"{', '.join(LEVEL_SAMPLERS)}); leave needs_level out, it is derived from them")
    return spec


def get(name: str) -> MethodSpec:
    """The spec of `name`, validated, with `:key=value` overrides applied and range-checked (ValueError naming the
    value)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method {name!r} is unknown; choose one of {', '.join(SPECS)}")
    base, _, args = name.partition(":")
    if base not in SPECS:
        raise ValueError(f"method {name!r} is unknown; choose one of {', '.join(SPECS)}")
    spec = SPECS[base]
    if not isinstance(spec, MethodSpec) or spec.name != base:
        raise ValueError(f"methods.SPECS[{base!r}] holds {getattr(spec, 'name', spec)!r}: register a MethodSpec "
                         f"under its own name, SPECS[spec.name] = spec")
    validate(spec)
    if not args:
        return spec
    params, ranges = spec.param_dict, _ranges(spec)
    for part in args.split(","):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or key not in params:
            raise ValueError(f"method {name!r}: {part!r} is not a hyper-parameter of {base!r}; it has "
                             f"{', '.join(f'{k}={v:g}' for k, v in params.items()) or 'none'}")
        params[key] = _parse_value(name, key, raw.strip(), ranges[key])
    return replace(spec, name=name, params=tuple(params.items()), label=f"{spec.display} ({args})")


def phase1_key(spec: MethodSpec) -> tuple:
    """Two methods whose networks are identical through phase 1 share it in a pack (two-phase ROS and ROS,
    cRT and baseline): the phase, the hyper-parameters its loss reads and the head."""
    p = spec.phases[0]
    return (p, tuple(spec.loss_params(p).items()), spec.head)


def names(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, s in SPECS.items() if family is None or s.family == family)


for _spec in SPECS.values():
    validate(_spec)


__all__ = ["Phase", "MethodSpec", "SPECS", "PAPER", "ORDER", "get", "validate", "phase1_key", "names",
           "LOSSES", "SAMPLERS", "MAX_PHASES"]
