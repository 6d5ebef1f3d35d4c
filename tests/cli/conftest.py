"""Fixtures of the CLI tests: where the real data lives, and the real kidney series."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest


def cli_shared_data_dir() -> Path:
    """``../shared/data`` next to the repository root, or ``$ONCOMRI_SHARED_DATA``."""
    env = os.environ.get("ONCOMRI_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _echo_number(path: Path) -> int:
    m = re.search(r"_e(\d+)\.nii\.gz$", path.name)
    if not m:
        raise AssertionError(f"{path}: no _e<N> echo marker in the name")
    return int(m.group(1))


def _kidney_series(vendor: str) -> list[Path]:
    """The 12 per-echo files of the real 3T kidney series of ``vendor``, in echo order.

    Skips the test, with the reason, when the shared data is absent.
    """
    folder = cli_shared_data_dir() / "mgre_kidney_3T" / vendor
    files = sorted(folder.glob("*.nii.gz")) if folder.is_dir() else []
    if len(files) != 12 or not all(f.with_name(f.name[:-7] + ".json").is_file() for f in files):
        pytest.skip(
            f"real data absent: {folder} should hold 12 per-echo .nii.gz files with .json "
            "sidecars (see shared/data/MANIFEST.md); set ONCOMRI_SHARED_DATA to the shared "
            "data folder to run this test"
        )
    return sorted(files, key=_echo_number)


@pytest.fixture(scope="session")
def kidney_series():
    """``kidney_series(vendor)``: the 12 per-echo files of the real 3T kidney series of
    ``vendor`` ('ge' or 'siemens') in echo order; skips the test when they are absent."""
    return _kidney_series
