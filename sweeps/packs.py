"""Packing a grid's networks into Tune trials: one trial trains one pack (`imbalance_core.trial.run_trials`).

A pack's networks share the settings in PACK_SHARED (one dataset load, one schedule). Which networks share a
first phase is `imbalance_core.trial`'s rule (`phase1_key`, `plan_pack`), read here, not restated: a phase 1
is keyed by the subset (imbalance, rho, mu, seed) and the phase, so every network sharing one is in the same
(cell, seed) group, and `whole_groups` packs keep each group whole (`largest_group`: the CPU pack's size).
Nothing here trains or imports Ray/MLflow.
"""
from __future__ import annotations

from imbalance_core.trial import TrialConfig, plan_pack

from .grids import cell_of

PACK_SHARED = ("dataset", "data_dir", "iterations", "lr", "batch_size", "n_per_class", "device", "loader")


def pack_key(c: TrialConfig) -> tuple:
    return tuple(getattr(c, name) for name in PACK_SHARED)


def _seed_group(c: TrialConfig) -> tuple:
    return (pack_key(c), cell_of(c), c.seed)


def largest_group(configs: list[TrialConfig]) -> int:
    """The most networks of one (cell, seed) under one set of shared settings: the CPU pack's size."""
    sizes: dict[tuple, int] = {}
    for c in configs:
        sizes[_seed_group(c)] = sizes.get(_seed_group(c), 0) + 1
    return max(sizes.values(), default=1)


def pack(configs: list[TrialConfig], pack_size: int, whole_groups: bool = False) -> list[list[TrialConfig]]:
    """Networks grouped into packs of <= pack_size that `run_trials` can train together.

    A pack shares dataset, data_dir, iterations, lr, batch_size, n_per_class, device and loader (PACK_SHARED).
    Within such a group each cell is cut into full packs first (a cell lists a seed's methods together, so
    the networks that share a first phase, `imbalance_core.trial.phase1_key`, mostly share a pack); the cells'
    remainders are then packed together in order. Deterministic: the same input gives the same packs.
    whole_groups: every (cell, seed) group is its own pack (cut only if larger than pack_size), so that
    every network whose phase1_key another network has shares its pack: the CPU pack.
    """
    if int(pack_size) < 1:
        raise ValueError(f"pack_size={pack_size!r} is not allowed: need an integer >= 1")
    if whole_groups:
        groups_: dict[tuple, list[TrialConfig]] = {}
        for c in configs:
            groups_.setdefault(_seed_group(c), []).append(c)
        return [g[i:i + pack_size] for g in groups_.values() for i in range(0, len(g), pack_size)]
    groups: dict[tuple, dict[str, list[TrialConfig]]] = {}
    for c in configs:
        groups.setdefault(pack_key(c), {}).setdefault(cell_of(c), []).append(c)
    packs: list[list[TrialConfig]] = []
    for cells in groups.values():
        rest: list[TrialConfig] = []
        for members in cells.values():
            full = len(members) - len(members) % pack_size
            packs += [members[i:i + pack_size] for i in range(0, full, pack_size)]
            rest += members[full:]
        packs += [rest[i:i + pack_size] for i in range(0, len(rest), pack_size)]
    return packs


def training_images(pack_: list[TrialConfig]) -> int:
    """Images a pack trains on: iterations x batch per training of its plan (`imbalance_core.trial.plan_pack`:
    each distinct phase 1 once, then each phase 2)."""
    s = pack_[0].schedule
    return plan_pack(pack_).trainings * s.iterations * s.batch_size
