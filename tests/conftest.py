"""Shared test helpers: where the real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """../shared/data next to the repository (or $ONCOMRI_SHARED_DATA)."""
    env = os.environ.get("ONCOMRI_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (set ONCOMRI_SHARED_DATA)")
    return path
