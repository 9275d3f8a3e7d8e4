"""Shared pytest fixtures."""
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
