"""Shared fixtures: synthetic smears (core tests) and the real Taleqani data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "all-taleqani"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "Original").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (it lives in ../shared/data beside the checkout)")
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small public-layout synthetic data set (Original/ + Segmented/), 8 fields per class, 96 px."""
    from leukodx.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=8, size=96, seed=1)
