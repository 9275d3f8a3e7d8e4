"""Shared pytest fixtures and helpers."""
import json
import os
from pathlib import Path

import pytest

# ../shared/data beside the repository; IMBALANCE_SHARED_DATA points elsewhere (benchmarks/gpu_check.sh)
SHARED_DATA = Path(os.environ.get('IMBALANCE_SHARED_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'data')


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """The real datasets in ../shared/data (never copied into the repository)."""
    assert SHARED_DATA.is_dir(), f'shared data not found at {SHARED_DATA} (tests read ../shared/data)'
    return SHARED_DATA


def final_reports(sweep_dir: Path) -> dict[str, int]:
    """Final reports (a pack's results, in its checkpoint) per trial folder of a sweep: Tune appends one line to
    result.json per `tune.report`; a pack also reports its progress (with a checkpoint) after each finished
    network."""
    return {p.parent.name: sum(json.loads(ln).get("final", False) for ln in p.read_text().splitlines() if ln.strip())
            for p in Path(sweep_dir).glob("train_pack_*/result.json")}
