"""A pack's Tune checkpoint: its format, written on the worker (`sweeps.trainable`) and read on the driver.

    <checkpoint>/networks.json        {"pack": [asdict(TrialConfig), ...], "done": {index: result}}
    <checkpoint>/phase1.pt            the phase-1 states the pack's unfinished two-phase networks need
    <checkpoint>/figures/<index>/     a final checkpoint only: each network's two PNGs (NETWORK_FIGURES)

A pack checkpoints after every step (CPU: each network; stacked GPU: each phase); a retried or resumed trial
starts from it (`load_pack_checkpoint`) and trains only what was not finished. Its last report carries
`{"final": True}` (`is_final`) and the checkpoint then holds every network's result (`pack_results`) and PNGs
(`pack_outputs`). The results travel in the checkpoint, not in the reported metrics, so that Tune's experiment
state (every trial's last result, rewritten as trials finish) stays small at 23,000 networks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from imbalance_core.trial import TrialConfig

from .run_figures import NETWORK_FIGURES
from .tracking import dumps

CHECKPOINT_RESULTS = "networks.json"   # a pack's checkpoint: {index: result} of its finished networks
CHECKPOINT_PHASE1 = "phase1.pt"         # and the phase-1 states its unfinished two-phase networks need
CHECKPOINT_FIGURES = "figures"          # a final checkpoint: each network's PNGs, figures/<index>/<name>


def is_final(result: dict) -> bool:
    """A pack's last report: its checkpoint holds every network's result."""
    return bool(result.get("final"))


def _results_in(folder) -> list[dict]:
    saved = json.loads((Path(folder) / CHECKPOINT_RESULTS).read_text())
    return [saved["done"][str(i)] for i in range(len(saved["pack"]))]


def pack_results(result: dict, checkpoint) -> list[dict]:
    """Every network's result, in pack order, from a pack's final report and its checkpoint."""
    with checkpoint.as_directory() as d:
        return _results_in(d)


@contextlib.contextmanager
def pack_outputs(result: dict, checkpoint):
    """[(result, {figure name: PNG file})] of every network, in pack order, from a pack's final report and
    its checkpoint; the files exist inside the with block (the trial drew them: `trainable._run_pack`)."""
    with checkpoint.as_directory() as d:
        yield [(r, {n: Path(d) / CHECKPOINT_FIGURES / str(i) / n for n in NETWORK_FIGURES})
               for i, r in enumerate(_results_in(d))]


def load_pack_checkpoint(checkpoint, configs: list[TrialConfig]) -> tuple[dict[int, dict], dict[str, dict]]:
    """({index: result}, {phase1_key: state}) from a pack's Tune checkpoint (empty without one)."""
    if checkpoint is None:
        return {}, {}
    import torch
    with checkpoint.as_directory() as d:
        saved = json.loads((Path(d) / CHECKPOINT_RESULTS).read_text())
        if saved.get("pack") != [dataclasses.asdict(c) for c in configs]:
            return {}, {}                          # not this pack's checkpoint: start over
        done = {int(i): r for i, r in saved["done"].items()}
        p1 = Path(d) / CHECKPOINT_PHASE1
        phase1 = torch.load(p1, weights_only=True) if p1.is_file() else {}
    return done, phase1


def _save_pack_checkpoint(folder: str, configs, done: dict, phase1: dict) -> None:
    import torch
    (Path(folder) / CHECKPOINT_RESULTS).write_text(dumps({"pack": [dataclasses.asdict(c) for c in configs],
                                                          "done": {str(i): r for i, r in done.items()}}))
    if phase1:
        torch.save(phase1, Path(folder) / CHECKPOINT_PHASE1)
