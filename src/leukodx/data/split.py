"""Group-aware train/val/test splits: SGDC (one global stratified split) or per-class fixed counts.

Every duplicate group (exact pixels or perceptual-hash near duplicates) lands on one side only, so copies of
a field never sit on both sides of a split. No patient IDs are published for the Taleqani images, so splits
are by field (duplicate group), never by patient.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from leukodx.data.duplicates import NEAR_DUPLICATE_MAX_DISTANCE, find_duplicate_groups
from leukodx.data.inspect import scan_dataset
from leukodx.data.layout import Dataset, load_dataset
from leukodx.errors import DatasetError, LeukodxError

STRATEGIES = ("sgdc", "per-class")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Group:
    gid: str
    members: tuple[int, ...]
    label: str


def _make_groups(ds: Dataset) -> tuple[list[Group], list[str]]:
    scans = scan_dataset(ds)
    read = [(i, s.pixels) for i, s in enumerate(scans) if s.pixels is not None]
    ok = [i for i, _ in read]
    bad = [s.sample.path for s in scans if s.pixels is None]
    _, _, comps = find_duplicate_groups([px.digest for _, px in read], [px.phash for _, px in read])
    groups = []
    # stable ids: order groups by their first path
    comps = sorted(comps, key=lambda g: min(ds.samples[ok[i]].path for i in g))
    for k, comp in enumerate(comps):
        members = tuple(sorted(ok[i] for i in comp))
        labels = Counter(ds.samples[m].label for m in members)
        groups.append(Group(f"g{k:05d}", members, labels.most_common(1)[0][0]))
    return groups, bad


def _take(groups: list[Group], targets: dict[str, int], rng: random.Random) -> set[str]:
    """Pick groups, class by class, until each class's image count is as near its target as groups allow."""
    order = groups[:]
    rng.shuffle(order)
    count = dict.fromkeys(targets, 0)
    chosen: set[str] = set()
    for g in order:
        c, n = g.label, len(g.members)
        if abs(count[c] + n - targets[c]) < abs(count[c] - targets[c]):
            chosen.add(g.gid)
            count[c] += n
    return chosen


def _class_sizes(groups: list[Group]) -> Counter:
    sizes: Counter = Counter()
    for g in groups:
        sizes[g.label] += len(g.members)
    return sizes


def make_split(
    data: str | Path,
    strategy: str = "sgdc",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    common_test: bool = False,
    test_seed: int = 0,
    fixed_test: str | Path | None = None,
) -> tuple[list[dict], dict]:
    """Split a data folder. Returns (rows of path,label,split,group; a summary with the parameters).

    - sgdc: all fields pooled and shuffled globally; val and test take `val`/`test` of every class
      (stratified), the rest is train.
    - per-class: each class is split on its own into equal val and test counts per class
      (`val`/`test` times the smallest class), as the study's 700/150/150; the rest is train.
    - common_test: the test set is drawn first, stratified, with `test_seed` alone, so every strategy and
      seed share one test set; fixed_test reuses the test rows of an existing split CSV instead.
    """
    if strategy not in STRATEGIES:
        raise LeukodxError(f"Unknown split strategy {strategy!r}.", f"Use one of: {', '.join(STRATEGIES)}.")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise LeukodxError(f"--val {val} and --test {test} must be fractions in [0, 1) summing below 1.",
                           "For example --val 0.15 --test 0.15.")
    ds = load_dataset(data)
    ds.require_nonempty()
    groups, bad = _make_groups(ds)
    sizes = _class_sizes(groups)
    classes = ds.classes

    def targets(fraction: float, stratified: bool) -> dict[str, int]:
        """Images per class: `fraction` of each class (stratified), else of the smallest class for each."""
        if stratified:
            return {c: round(fraction * sizes[c]) for c in classes}
        return dict.fromkeys(classes, round(fraction * min(sizes[c] for c in classes)))

    if fixed_test is not None:
        fixed = {r["path"] for r in read_split(fixed_test) if r["split"] == "test"}
        missing = fixed - {s.path for s in ds.samples}
        if missing:
            raise DatasetError(f"--fixed-test {fixed_test} names {len(missing)} test file(s) not in {data}, "
                               f"e.g. {sorted(missing)[:3]}.", "Use a split made from the same data folder.")
        test_ids = {g.gid for g in groups if any(ds.samples[m].path in fixed for m in g.members)}
    else:
        test_ids = _take(groups, targets(test, common_test or strategy == "sgdc"),
                         random.Random(test_seed if common_test else seed))

    rest = [g for g in groups if g.gid not in test_ids]
    val_ids = _take(rest, targets(val, strategy == "sgdc"), random.Random(seed * 7919 + 1))

    rows = []
    for g in groups:
        split = "test" if g.gid in test_ids else "val" if g.gid in val_ids else "train"
        for m in g.members:
            s = ds.samples[m]
            rows.append({"path": s.path, "label": s.label, "split": split, "group": g.gid})
    rows.sort(key=lambda r: r["path"])
    counts = {sp: {c: 0 for c in classes} for sp in SPLITS}
    for r in rows:
        counts[r["split"]][r["label"]] += 1
    summary = {
        "data": str(ds.root),
        "strategy": strategy,
        "val": val,
        "test": test,
        "seed": seed,
        "common_test": common_test,
        "test_seed": test_seed if common_test else None,
        "fixed_test": str(fixed_test) if fixed_test else None,
        "near_duplicate_max_distance": NEAR_DUPLICATE_MAX_DISTANCE,
        "n_images": len(rows),
        "n_groups": len(groups),
        "n_multi_member_groups": sum(len(g.members) > 1 for g in groups),
        "left_out_unreadable": bad,
        "counts": counts,
        "note": "Split by field and duplicate group; the data publishes no patient IDs, so not by patient.",
    }
    return rows, summary


def write_split(rows: list[dict], summary: dict | None, out: str | Path) -> Path:
    """Write a split CSV (path,label,split,group) and, when given, its summary beside it (.json; returned)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)
    meta = out.with_suffix(".json")
    if summary is not None:
        meta.write_text(json.dumps(summary, indent=2))
    return meta


def read_split(path: str | Path, data: str | Path | None = None, part: str | None = None) -> list[dict]:
    """Read a split CSV (columns path,label,split,group); with `data`, check that every file it names exists
    there; with `part` ("train", "val" or "test"), only that part's rows."""
    path = Path(path)
    if not path.is_file():
        raise LeukodxError(f"Split file {path} does not exist.", "Make one with: leukodx data split DATA --out SPLIT.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label", "split"} <= set(reader.fieldnames):
            raise LeukodxError(f"{path} is not a split CSV (columns {reader.fieldnames}).",
                               "It needs the columns path,label,split,group.")
        rows = list(reader)
    wrong = sorted({r["split"] for r in rows} - set(SPLITS))
    if wrong:
        raise LeukodxError(f"{path} has unknown split names {wrong}.", "Use train, val and test.")
    if data is not None:
        root = Path(data)
        missing = [r["path"] for r in rows if not (root / r["path"]).is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DatasetError(
                f"{path} names {len(missing)} file(s) missing from {root}: {', '.join(missing[:5])}{more}.",
                "Use the data folder the split was made from, or make a new split.",
            )
    return [r for r in rows if part is None or r["split"] == part]
