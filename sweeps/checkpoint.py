"""A pack's Tune checkpoint: its format, written on the worker (`sweeps.trainable`) and read on the driver.

    <checkpoint>/networks.json        {"pack": [asdict(TrialConfig), ...], "done": {index: result}}
    <checkpoint>/phase1.pt            the phase-1 states the pack's unfinished two-phase networks need
    <checkpoint>/in_phase.pt          the group in training when the checkpoint was written: its PhaseState
                                      (run_trials' on_phase, every --checkpoint-every-min of a phase)
    <checkpoint>/figures/<index>/     a final checkpoint only: each network's two PNGs (NETWORK_FIGURES)

A pack checkpoints after every step (CPU: each network; stacked GPU: each phase) and every few minutes inside
a phase; a retried or resumed trial starts from it (`PackProgress.load`), trains only what was not finished
and takes up a phase where its last checkpoint left it. Its last report carries
`{"final": True}` (`is_final`) and the checkpoint then holds every network's result (`pack_results`) and PNGs
(`pack_outputs`). The results travel in the checkpoint, not in the reported metrics, so that Tune's experiment
state (every trial's last result, rewritten as trials finish) stays small at 23,000 networks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from imbalance_core.trial import Progress, TrialConfig

from .run_figures import NETWORK_FIGURES
from .tracking import dumps

CHECKPOINT_RESULTS = "networks.json"   # a pack's checkpoint: {index: result} of its finished networks
CHECKPOINT_PHASE1 = "phase1.pt"         # and the phase-1 states its unfinished two-phase networks need
CHECKPOINT_IN_PHASE = "in_phase.pt"     # and the state of the group in training (a checkpoint inside a phase)
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


class PackProgress(Progress):
    """A pack's progress (imbalance_core.trial.Progress: kept by run_trials' callbacks) as its checkpoint holds
    it: `save` writes it (the trainable: into a Tune checkpoint after each step), `load` reads it back."""

    @classmethod
    def load(cls, folder, configs: list[TrialConfig]) -> "PackProgress":
        """The progress saved in `folder` (a checkpoint's directory; None: nothing yet). A checkpoint of
        another pack is ignored: the pack starts over."""
        if folder is None:
            return cls(configs)
        import torch
        saved = json.loads((Path(folder) / CHECKPOINT_RESULTS).read_text())
        if saved.get("pack") != [dataclasses.asdict(c) for c in configs]:
            return cls(configs)
        files = {name: Path(folder) / name for name in (CHECKPOINT_PHASE1, CHECKPOINT_IN_PHASE)}
        loaded = {name: torch.load(f, weights_only=True) if f.is_file() else {} for name, f in files.items()}
        return cls(configs, {int(i): r for i, r in saved["done"].items()}, loaded[CHECKPOINT_PHASE1],
                   loaded[CHECKPOINT_IN_PHASE])

    def save(self, folder) -> None:
        import torch
        (Path(folder) / CHECKPOINT_RESULTS).write_text(dumps({"pack": [dataclasses.asdict(c) for c in self.configs],
                                                              "done": {str(i): r for i, r in self.done.items()}}))
        if self.phase1:
            torch.save(self.phase1, Path(folder) / CHECKPOINT_PHASE1)
        if self.in_phase:
            torch.save(self.in_phase, Path(folder) / CHECKPOINT_IN_PHASE)
