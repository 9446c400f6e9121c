"""Non-smear images and lab-shifted smears through the analysis pipeline: are the flags where they belong?

    .venv/bin/python benchmarks/non_smear.py [--data ../shared/data/all-taleqani] [--out benchmarks/non_smear]

1. Generates, deterministically, 110 images that are not usable smear fields into OUT/images/<kind>/:
   screenshots of a login page and of other app pages, text documents, blank or near-uniform images, colour
   gradients, noise, natural-like pictures (clouds, landscapes, wood, foliage, pebbles), and, from the val rows
   of the split (never test rows), greyscale copies, heavily blurred copies (Gaussian sigma 5-8 px) and copies
   at a fifth or sixteen times the magnification (outside the 0.25x-12x the analysis resamples). Without the data, synthetic smears stand in for the fields.
2. Runs every image through `leukodx.inference.pipeline.load_analyzer()` (what `leukodx predict` runs) and
   counts the fields not flagged `ok`, per kind (target: 100 % flagged).
3. Runs the val rows of benchmarks/splits/taleqani-sgdc-seed0.csv and their lab-shifted copies
   (`lab_shift(rgb, rng_for(0, path), severity=s)`, s = 1 and 1.5) through the same pipeline and counts the
   flags (targets: <= 5 % in distribution, <= 10 % under shift); with --test, the test rows too (report only;
   nothing is tuned on them).
Writes benchmarks/non_smear.json and benchmarks/non_smear.md.

`--measure-reference` prints the red-cell diameter of the training rows (the constant in
leukodx.inference.scale).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "benchmarks" / "splits" / "taleqani-sgdc-seed0.csv"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "all-taleqani"
SIZE = 224
PER_KIND = 10
KINDS = ("login", "app_page", "text", "blank", "gradient", "noise", "natural", "greyscale", "blurred",
         "magnified_x0.2", "magnified_x16")
WORDS = ("patient smear field report blood cell count review sign off case result confidence model lab sample "
         "date user password login submit cancel settings export print summary differential blast percent").split()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_line(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words)).capitalize()


# ---------------------------------------------------------------------------------------------------------------
# generated pictures (all deterministic in `seed`)


def login_page(seed: int, size: int = SIZE) -> np.ndarray:
    """A login form like the web app's: header bar, two input boxes, a button, small print."""
    rng = np.random.default_rng(seed)
    w = h = size * int(rng.integers(1, 4))  # screenshots come at any size
    bg = tuple(int(v) for v in rng.integers(235, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    accent = tuple(int(v) for v in rng.integers(20, 200, 3))
    d.rectangle([0, 0, w, h // 8], fill=accent)
    d.text((w // 20, h // 40), "leukodx", fill=(255, 255, 255), font=_font(max(10, h // 16)))
    box_w = int(w * rng.uniform(0.5, 0.8))
    x0 = (w - box_w) // 2
    for k, label in enumerate(("Username", "Password")):
        y = int(h * (0.3 + 0.2 * k))
        d.text((x0, y - h // 18), label, fill=(40, 40, 40), font=_font(max(8, h // 22)))
        d.rectangle([x0, y, x0 + box_w, y + h // 12], outline=(150, 150, 150), fill=(255, 255, 255), width=2)
    y = int(h * 0.72)
    d.rounded_rectangle([x0, y, x0 + box_w, y + h // 10], radius=h // 40, fill=accent)
    d.text((x0 + box_w // 3, y + h // 40), "Log in", fill=(255, 255, 255), font=_font(max(8, h // 20)))
    d.text((x0, int(h * 0.9)), "Research use only", fill=(120, 120, 120), font=_font(max(8, h // 28)))
    return np.asarray(img)


def app_page(seed: int, size: int = SIZE) -> np.ndarray:
    """A case list / dashboard: a sidebar, a table of rows, coloured badges and a chart."""
    rng = np.random.default_rng(seed)
    w, h = size * int(rng.integers(1, 4)), size * int(rng.integers(1, 3))
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(240, 256, 3)))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w // 5, h], fill=tuple(int(v) for v in rng.integers(30, 90, 3)))
    f = _font(max(8, h // 24))
    for i in range(8):
        y = h // 10 + i * h // 10
        d.text((w // 50, y), _text_line(rng, 1), fill=(230, 230, 230), font=f)
        d.line([w // 5 + 5, y + h // 14, w - 5, y + h // 14], fill=(210, 210, 210))
        d.text((w // 5 + 10, y), _text_line(rng, 3), fill=(30, 30, 30), font=f)
        colour = [(200, 40, 40), (20, 140, 60), (230, 150, 0)][int(rng.integers(0, 3))]
        d.rounded_rectangle([w - w // 6, y, w - w // 40, y + h // 16], radius=4, fill=colour)
    if rng.random() < 0.5:  # a bar chart
        for i in range(6):
            bh = int(rng.uniform(0.1, 0.4) * h)
            d.rectangle([w // 2 + i * w // 16, h - bh, w // 2 + i * w // 16 + w // 24, h], fill=(60, 110, 200))
    return np.asarray(img)


def text_page(seed: int, size: int = SIZE) -> np.ndarray:
    """A page of text (a report, a letter); sometimes coloured paper or ink, sometimes a photo of it (blurred)."""
    rng = np.random.default_rng(seed)
    w, h = size * int(rng.integers(1, 3)), size * int(rng.integers(1, 4))
    paper = tuple(int(v) for v in (rng.integers(235, 256, 3) if rng.random() < 0.6 else rng.integers(200, 256, 3)))
    ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if rng.random() < 0.6 else rng.integers(0, 160, 3)))
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    fs = int(rng.integers(9, 18))
    f = _font(fs)
    y = fs
    while y < h - fs:
        d.text((fs, y), _text_line(rng, int(rng.integers(3, 9))), fill=ink, font=f)
        y += int(fs * 1.5)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(img)


def blank(seed: int, size: int = SIZE) -> np.ndarray:
    """Uniform or nearly uniform: white, black, grey, a pale pink background, with at most faint noise."""
    rng = np.random.default_rng(seed)
    base = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (240, 225, 235), (230, 230, 200)][seed % 5]
    img = np.ones((size, size, 3), np.float32) * np.array(base, np.float32)
    img += rng.normal(0, [0.0, 1.0, 2.0, 3.0, 1.5][int(rng.integers(0, 5))], img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def gradient(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if seed % 2:
        t = np.hypot(yy - rng.uniform(0, 1), xx - rng.uniform(0, 1))
    else:
        a = rng.uniform(0, np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * t[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def noise(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = seed % 3
    if kind == 0:
        img = rng.uniform(0, 255, (size, size, 3))
    elif kind == 1:
        img = rng.normal(rng.uniform(60, 200), rng.uniform(20, 60), (size, size, 3))
    else:  # smoothed colour noise (blobs of one size: the hardest for a blob detector)
        from scipy import ndimage as ndi

        img = ndi.gaussian_filter(rng.normal(0, 1, (size, size, 3)), (rng.uniform(1, 4),) * 2 + (0,))
        img = 128 + 60 * img / (img.std() + 1e-6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _fractal(rng, size: int, beta: float) -> np.ndarray:
    f = np.fft.fftfreq(size)
    r = np.hypot(f[:, None], f[None, :])
    r[0, 0] = 1.0
    spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / r ** (beta / 2)
    spec[0, 0] = 0
    x = np.fft.ifft2(spec).real
    return (x - x.mean()) / (x.std() + 1e-9)


def natural(seed: int, size: int = SIZE) -> np.ndarray:
    """Natural-like pictures: clouds, a landscape, wood grain, foliage, pebbles (no microscope)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    kind = seed % 5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # clouds
        c = _fractal(rng, size, 3.0)[..., None]
        img = np.array([90, 150, 230]) + (np.array([250, 250, 250]) - np.array([90, 150, 230])) * (
            1 / (1 + np.exp(-2 * c)))
    elif kind == 1:  # landscape: sky, horizon, textured ground
        horizon = 0.4 + 0.1 * _fractal(rng, size, 3.5)[0][None, :] * 0.3
        sky = np.array([120, 170, 235]) * (1 - 0.3 * yy[..., None])
        ground = np.array([70, 120, 40]) * (1 + 0.25 * _fractal(rng, size, 2.0)[..., None])
        img = np.where((yy < horizon)[..., None], sky, ground)
    elif kind == 2:  # wood grain
        t = xx * rng.uniform(8, 20) + 2 * _fractal(rng, size, 3.0)
        g = 0.5 + 0.5 * np.sin(2 * np.pi * t)
        img = np.array([120, 70, 30]) + np.array([80, 60, 40]) * g[..., None]
    elif kind == 3:  # foliage
        g = _fractal(rng, size, 1.6)
        img = np.stack([40 + 30 * g, 110 + 60 * g, 30 + 20 * g], axis=2)
    else:  # pebbles: a Voronoi mosaic of stones of many sizes and colours
        n = int(rng.integers(20, 60))
        pts = rng.uniform(0, size, (n, 2))
        d = (np.mgrid[0:size, 0:size].reshape(2, -1).T[:, None, :] - pts[None]) ** 2
        lab = d.sum(2).argmin(1).reshape(size, size)
        cols = rng.uniform(60, 200, (n, 3)) * np.array([1.0, 0.9, 0.8])
        img = cols[lab]
        edge = ndi.morphological_gradient(lab, size=3) > 0
        img[edge] *= 0.4
        img = ndi.gaussian_filter(img, (1, 1, 0))
    img = img + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


GENERATED = {"login": login_page, "app_page": app_page, "text": text_page, "blank": blank, "gradient": gradient,
             "noise": noise, "natural": natural}


# ---------------------------------------------------------------------------------------------------------------
# made from smear fields


def greyscale(rgb: np.ndarray, seed: int) -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)


def blurred(rgb: np.ndarray, seed: int) -> np.ndarray:
    sigma = 5.0 + 3.0 * np.random.default_rng(seed).random()  # 5-8 px on a 224-px field
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def magnified(rgb: np.ndarray, factor: float) -> np.ndarray:
    from leukodx.evaluation.shift import magnify

    return magnify(rgb, factor)[0]


DERIVED = {"greyscale": greyscale, "blurred": blurred,
           "magnified_x0.2": lambda rgb, seed: magnified(rgb, 0.2),
           "magnified_x16": lambda rgb, seed: magnified(rgb, 16.0)}


def split_rows(which: str) -> list[tuple[str, str]]:
    """(path, label) of the `which` rows of SPLIT."""
    from leukodx.data.split import read_split

    return [(r["path"], r["label"]) for r in read_split(SPLIT) if r["split"] == which]


def source_fields(data: Path | None, n: int) -> tuple[list[np.ndarray], str]:
    """n smear fields to derive images from: val rows of the split (spread over classes), or synthetic ones."""
    if data is not None and (data / "Original").is_dir() and SPLIT.is_file():
        rows = split_rows("val")
        pick = [rows[i] for i in np.linspace(0, len(rows) - 1, n).astype(int)]
        return [np.asarray(Image.open(data / p).convert("RGB")) for p, _ in pick], f"val rows of {SPLIT.name}"
    from leukodx.data.synthetic import synthetic_field

    classes = ("Benign", "Early", "Pre", "Pro")
    return [synthetic_field(classes[i % 4], SIZE, seed=9000 + i)[0] for i in range(n)], "synthetic smears"


def generate(out: Path, data: Path | None, per_kind: int = PER_KIND) -> tuple[dict[str, list[Path]], str]:
    """Write the non-smear images; returns {kind: [paths]} and where the smear-derived ones came from."""
    fields, source = source_fields(data, per_kind)
    paths: dict[str, list[Path]] = {}
    for kind in KINDS:
        d = out / kind
        d.mkdir(parents=True, exist_ok=True)
        paths[kind] = []
        for i in range(per_kind):
            seed = 1000 * KINDS.index(kind) + i
            if kind in GENERATED:
                img = GENERATED[kind](seed)
                ext = "png" if kind in ("login", "app_page", "text") and i % 2 == 0 else "jpg"
            else:
                img = DERIVED[kind](fields[i], seed)
                ext = "jpg"
            p = d / f"{kind}-{i:02d}.{ext}"
            Image.fromarray(img).save(p, quality=92) if ext == "jpg" else Image.fromarray(img).save(p)
            paths[kind].append(p)
    return paths, source


# ---------------------------------------------------------------------------------------------------------------
# measuring


def flag_counts(results) -> dict:
    c = Counter(r.flag for r in results)
    n = len(results)
    return {"n": n, "flagged": n - c.get("ok", 0), "flagged_share": round((n - c.get("ok", 0)) / max(n, 1), 4),
            "flags": dict(sorted(c.items()))}


def smear_rows(analysis, data: Path, which: str, severities=(0.0, 1.0, 1.5), batch: int = 32) -> dict:
    from leukodx.evaluation.shift import lab_shift, rng_for

    rows = split_rows(which)
    out = {}
    for s in severities:
        res, labels = [], []
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            imgs = []
            for p, _ in chunk:
                rgb = np.asarray(Image.open(data / p).convert("RGB"))
                imgs.append(rgb if s == 0 else lab_shift(rgb, rng_for(0, p), severity=s))
            res += analysis.analyze_many(imgs, names=[p for p, _ in chunk], batch_size=batch)
            labels += [lab for _, lab in chunk]
        entry = flag_counts(res)
        correct = np.array([r.label == lab for r, lab in zip(res, labels, strict=True)])
        ok = np.array([r.flag == "ok" for r in res])
        entry["accuracy_all"] = round(float(correct.mean()), 4)
        entry["accuracy_unflagged"] = round(float(correct[ok].mean()), 4) if ok.any() else None
        entry["accuracy_flagged"] = round(float(correct[~ok].mean()), 4) if (~ok).any() else None
        reasons = Counter(r.flag_reason.split(":")[0].split(" (")[0] for r in res if r.flag != "ok")
        entry["top_reasons"] = dict(reasons.most_common(6))
        entry["quality_stage_ms_p50"] = round(float(np.median([r.timings_ms.get("quality", np.nan) for r in res])), 2)
        entry["total_ms_p50"] = round(float(np.median([r.timings_ms.get("total", np.nan) for r in res])), 2)
        out["in_distribution" if s == 0 else f"lab_shift_severity_{s:g}"] = entry
    return out


def measure_reference(data: Path) -> dict:
    from leukodx.inference.scale import estimate_rbc_diameter

    ds, cs = [], []
    for p, _ in split_rows("train"):
        d, c = estimate_rbc_diameter(np.asarray(Image.open(data / p).convert("RGB")))
        cs.append(c)
        if d is not None:
            ds.append(d * SIZE / 224)
    ds = np.array(ds)
    return {"n": len(cs), "n_estimated": len(ds), "median": round(float(np.median(ds)), 2),
            "p5_p95": [round(float(v), 2) for v in np.percentile(ds, [5, 95])],
            "p1_p99": [round(float(v), 2) for v in np.percentile(ds, [1, 99])]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=Path("/tmp/leukodx-non-smear"), help="where the images go")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "non_smear")
    ap.add_argument("--test", action="store_true", help="also report the test rows (nothing is tuned on them)")
    ap.add_argument("--no-smears", action="store_true", help="skip the val / lab-shift part")
    ap.add_argument("--measure-reference", action="store_true")
    args = ap.parse_args(argv)
    data = args.data if (args.data / "Original").is_dir() else None
    if args.measure_reference:
        if data is None:
            sys.exit(f"no data at {args.data}")
        print(json.dumps(measure_reference(data), indent=2))
        return 0

    from leukodx.inference.pipeline import load_analyzer

    t0 = time.time()
    paths, source = generate(args.out, data)
    analysis = load_analyzer()
    per_kind, examples = {}, {}
    for kind, ps in paths.items():
        res = analysis.analyze_many([str(p) for p in ps], names=[p.name for p in ps])
        per_kind[kind] = flag_counts(res)
        missed = [(r.path, r.label, r.confidence) for r in res if r.flag == "ok"]
        per_kind[kind]["not_flagged"] = [f"{p} ({lab} {c:.2f})" for p, lab, c in missed]
        examples[kind] = res[0].flag_reason
    total = sum(v["n"] for v in per_kind.values())
    flagged = sum(v["flagged"] for v in per_kind.values())
    doc = {
        "command": "python benchmarks/non_smear.py" + (" --test" if args.test else ""),
        "models": analysis.describe()["classifier"]["dir"], "derived_from": source,
        "non_smear": {"n": total, "flagged": flagged, "flagged_share": round(flagged / total, 4),
                      "per_kind": per_kind, "example_reason": examples},
        "machine": platform.platform(),
    }
    if data is not None and not args.no_smears:
        doc["val"] = smear_rows(analysis, data, "val")
        if args.test:
            doc["test"] = smear_rows(analysis, data, "test")
    doc["seconds"] = round(time.time() - t0, 1)
    args.results.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(render_md(doc))
    print(render_md(doc))
    return 0


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def render_md(doc: dict) -> str:
    ns = doc["non_smear"]
    lines = ["# Flags on non-smear images and on lab-shifted smears", "",
             f"Command: `{doc['command']}` (bundled models: `{doc['models']}`; smear-derived kinds from "
             f"{doc['derived_from']}). Machine: {doc['machine']}.", "",
             f"## Non-smear images: {ns['flagged']} of {ns['n']} flagged ({ns['flagged_share']:.1%}; target 100 %)",
             "", "| kind | n | flagged | flags | example reason |", "|---|---|---|---|---|"]
    for kind, v in ns["per_kind"].items():
        flags = ", ".join(f"{k} {n}" for k, n in v["flags"].items())
        reason = (ns["example_reason"].get(kind) or "").replace("|", "/")
        lines.append(f"| {kind} | {v['n']} | {v['flagged_share']:.0%} | {flags} | {reason} |")
    missed = [m for v in ns["per_kind"].values() for m in v["not_flagged"]]
    if missed:
        lines += ["", "Not flagged: " + "; ".join(missed)]
    for part in ("val", "test"):
        if part not in doc:
            continue
        lines += ["", f"## {part} rows of benchmarks/splits/taleqani-sgdc-seed0.csv"
                  + (" (report only: nothing was tuned on them)" if part == "test" else
                     " (the feature-distance threshold was fitted on these and their lab-shifted copies)"), "",
                  "| set | n | flagged | target | accuracy all | accuracy unflagged | accuracy flagged | flags | "
                  "flag check ms p50 |", "|---|---|---|---|---|---|---|---|---|"]
        for name, v in doc[part].items():
            target = "<= 5 %" if name == "in_distribution" else ("<= 10 %" if name.endswith("_1") else "")
            flags = ", ".join(f"{k} {n}" for k, n in v["flags"].items())
            lines.append(f"| {name} | {v['n']} | {v['flagged_share']:.1%} | {target} | {_pct(v['accuracy_all'])} | "
                         f"{_pct(v['accuracy_unflagged'])} | {_pct(v['accuracy_flagged'])} | {flags} | "
                         f"{v['quality_stage_ms_p50']} |")
        lines += ["", "Flag reasons: " + "; ".join(f"{name}: " + ", ".join(f"{k} ({n})" for k, n in
                                                                             v["top_reasons"].items())
                                                   for name, v in doc[part].items() if v["top_reasons"])]
    lines += ["", f"Took {doc['seconds']} s (machine shared with other jobs: timings are upper bounds).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
