"""Shared pytest fixtures."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """The real datasets in ../shared/data (never copied into the repository)."""
    assert SHARED_DATA.is_dir(), f'shared data not found at {SHARED_DATA} (tests read ../shared/data)'
    return SHARED_DATA
