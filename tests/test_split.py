"""Split invariants: no duplicate group crosses splits, stratification, determinism, common test sets."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pytest

from leukodx.data.split import make_split, read_split, write_split
from leukodx.data.synthetic import make_synthetic_dataset
from leukodx.errors import DatasetError, LeukodxError


@pytest.fixture(scope="module")
def dup_data(tmp_path_factory):
    """40 fields per class, with exact copies and a re-encoded (near-duplicate) copy planted."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("dups"), per_class=40, size=64, seed=2)
    from PIL import Image

    for label, i in [("Benign", 0), ("Early", 1), ("Pre", 2), ("Pro", 3)]:
        src = root / "Original" / label / f"syn-{label}-{i:03d}.jpg"
        shutil.copy(src, src.with_name(f"copy-a-{i}.jpg"))
        shutil.copy(src, src.with_name(f"copy-b-{i}.jpg"))
        Image.open(src).save(src.with_name(f"near-{i}.jpg"), quality=60)  # re-encoded: not the same pixels
    return root


def _groups_cross(rows):
    splits_of = {}
    for r in rows:
        splits_of.setdefault(r["group"], set()).add(r["split"])
    return [g for g, s in splits_of.items() if len(s) > 1]


@pytest.mark.parametrize("strategy", ["sgdc", "per-class"])
def test_no_group_crosses_splits(dup_data, strategy):
    rows, summary = make_split(dup_data, strategy, val=0.2, test=0.2, seed=3)
    assert _groups_cross(rows) == []
    by_group = Counter(r["group"] for r in rows)
    assert max(by_group.values()) >= 4  # the planted copies were grouped (3 exact + 1 near + original)
    assert summary["n_images"] == 4 * 43


def test_sgdc_is_stratified_within_one_group(dup_data):
    rows, summary = make_split(dup_data, "sgdc", val=0.2, test=0.2, seed=1)
    sizes = Counter(r["label"] for r in rows)
    for sp, frac in (("val", 0.2), ("test", 0.2)):
        for c, n in summary["counts"][sp].items():
            assert abs(n - frac * sizes[c]) <= 4, (sp, c, n)  # within the largest group size


def test_per_class_gives_equal_counts(dup_data):
    rows, summary = make_split(dup_data, "per-class", val=0.25, test=0.25, seed=1)
    for sp in ("val", "test"):
        counts = list(summary["counts"][sp].values())
        assert max(counts) - min(counts) <= 4
        assert abs(counts[0] - 11) <= 4


def test_same_seed_same_split_other_seed_other_split(dup_data):
    a, _ = make_split(dup_data, "sgdc", seed=7)
    b, _ = make_split(dup_data, "sgdc", seed=7)
    c, _ = make_split(dup_data, "sgdc", seed=8)
    assert a == b and a != c


def test_common_test_set_is_shared_across_strategies_and_seeds(dup_data, tmp_path):
    tests = []
    for strategy in ("sgdc", "per-class"):
        for seed in (0, 1):
            rows, _ = make_split(dup_data, strategy, seed=seed, common_test=True, test_seed=5)
            tests.append({r["path"] for r in rows if r["split"] == "test"})
            assert _groups_cross(rows) == []
    assert all(t == tests[0] for t in tests)
    rows, summary = make_split(dup_data, "sgdc", seed=0, common_test=True, test_seed=5)
    out = tmp_path / "s.csv"
    write_split(rows, summary, out)
    fixed, _ = make_split(dup_data, "per-class", seed=4, fixed_test=out)
    assert {r["path"] for r in fixed if r["split"] == "test"} == tests[0]


def test_split_csv_roundtrip_and_missing_files(dup_data, tmp_path):
    rows, summary = make_split(dup_data, "sgdc", seed=0)
    out = tmp_path / "split.csv"
    write_split(rows, summary, out)
    assert (tmp_path / "split.json").is_file()
    with open(out) as f:
        assert next(csv.reader(f)) == ["path", "label", "split", "group"]
    assert read_split(out, dup_data) == rows
    lines = out.read_text().splitlines()
    lines.append("Original/Pro/ghost.jpg,Pro,train,g99999")
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="ghost.jpg"):
        read_split(out, dup_data)


def test_bad_arguments(dup_data):
    with pytest.raises(LeukodxError, match="strategy"):
        make_split(dup_data, "random")
    with pytest.raises(LeukodxError, match="fractions"):
        make_split(dup_data, "sgdc", val=0.6, test=0.6)


def test_real_data_split_keeps_duplicates_together(real_data, tmp_path):
    rows, summary = make_split(real_data, "sgdc", seed=0)
    assert len(rows) == 2277
    assert _groups_cross(rows) == []
    assert summary["n_multi_member_groups"] >= 25
