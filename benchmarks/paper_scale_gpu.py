"""The reference study at paper scale on one GPU: InceptionResNetV2 vs NASNetLarge x SGDC vs per-class.

Study settings: 224 px, Adam lr 1e-4, batch 32, up to 60 epochs, early stopping on validation accuracy,
balanced classes (oversampling), flips and 90-degree rotations. Differences from the paper, stated openly:
backbones are trained FROM SCRATCH (no ImageNet weights can be fetched here), one seed per cell, a
wall-clock budget per run (the GPU was lent for 15 minutes), and a group-aware common test set
(duplicates kept on one side) instead of an image-level split.

Needs torch, timm, numpy, Pillow and leukodx (its split reader and metrics; carry the source tree):

    python benchmarks/paper_scale_gpu.py --data DATA --splits SPLIT_DIR --out OUT

SPLIT_DIR holds `<strategy>-seed<k>.csv` files made with
`leukodx data split DATA --strategy S --seed K --common-test --out SPLIT_DIR/S-seedK.csv`.
Writes OUT/results.json and OUT/table.md after every run (so a cut-off still leaves what was measured).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from leukodx.data.split import read_split
from leukodx.evaluation.metrics import classification_metrics

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def decode(root: Path, rel: str, size: int) -> np.ndarray:
    img = Image.open(root / rel).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def lab_shift(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A simple lab-to-lab variation: stain hue/strength, white balance, contrast, blur, JPEG, +-20 % zoom."""
    x = rgb.astype(np.float32) / 255.0
    od = -np.log(np.clip(x, 1 / 255, 1))
    mix = np.eye(3) + rng.normal(0, 0.12, (3, 3))  # stain hue change
    od = od @ mix.T * rng.uniform(0.75, 1.3)  # stain strength
    x = np.exp(-np.clip(od, 0, None))
    x = x * rng.uniform(0.85, 1.15, 3)  # white balance
    x = (x - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    img = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8))
    z = rng.uniform(0.8, 1.2)
    w = img.size[0]
    nz = max(8, int(round(w * z)))
    img = img.resize((nz, nz), Image.BILINEAR)
    if nz >= w:
        o = (nz - w) // 2
        img = img.crop((o, o, o + w, o + w))
    else:
        canvas = Image.new("RGB", (w, w), tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(0)))
        canvas.paste(img, ((w - nz) // 2, (w - nz) // 2))
        img = canvas
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(40, 90)))
    return np.asarray(Image.open(buf).convert("RGB"))


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    m = classification_metrics(y, p, CLASSES)
    return {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "n_images")}


def predict(model, x_u8: torch.Tensor, mean, std, bs: int, device) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x_u8), bs):
        x = (x_u8[i:i + bs].to(device).float() - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.softmax(model(x).float(), 1).cpu())
    return torch.cat(out).numpy()


def augment(x: torch.Tensor) -> torch.Tensor:
    if random.random() < 0.5:
        x = x.flip(3)
    if random.random() < 0.5:
        x = x.flip(2)
    return torch.rot90(x, random.randint(0, 3), (2, 3))


def run_one(arch, rows, images, index, test_shift, args, device) -> dict:
    import timm

    seed = args.seed
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    tr = [index[r["path"]] for r in rows if r["split"] == "train"]
    va = [index[r["path"]] for r in rows if r["split"] == "val"]
    te = [index[r["path"]] for r in rows if r["split"] == "test"]
    lab = {index[r["path"]]: CLASSES.index(r["label"]) for r in rows}
    ytr = np.array([lab[i] for i in tr])
    yva = np.array([lab[i] for i in va])
    yte = np.array([lab[i] for i in te])
    # balance by oversampling: every class drawn equally often
    w = 1.0 / np.bincount(ytr, minlength=4)[ytr]
    model = timm.create_model(arch, pretrained=False, num_classes=4).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    x_all = images  # uint8 N x 3 x H x W on device
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
    history = []
    t0 = time.time()
    n_steps = math.ceil(len(tr) / args.batch_size)
    for epoch in range(args.epochs):
        model.train()
        te0 = time.time()
        order = np.random.choice(tr, size=len(tr), replace=True, p=w / w.sum())
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(n_steps):
            idx = order[s * args.batch_size:(s + 1) * args.batch_size]
            y = torch.as_tensor([lab[i] for i in idx], device=device)
            x = augment(x_all[torch.as_tensor(idx, device=device)].float())
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            total += len(idx)
        pva = predict(model, x_all[torch.as_tensor(va, device=device)], mean, std, 128, device)
        vacc = float((pva.argmax(1) == yva).mean())
        dt = time.time() - te0
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / total, "train_acc": correct / total,
                        "val_acc": vacc, "seconds": round(dt, 2)})
        print(f"{arch} epoch {epoch + 1}: loss {loss_sum / total:.3f} train {correct / total:.3f} val {vacc:.3f} "
              f"({dt:.1f}s)", flush=True)
        if vacc > best:
            best, best_epoch, bad = vacc, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= args.patience:
            stop = "early stopping"
            break
        if time.time() - t0 + dt > args.time_budget_s:
            stop = f"time budget {args.time_budget_s:.0f}s"
            break
    else:
        stop = "max epochs"
    model.load_state_dict(best_state)
    pte = predict(model, x_all[torch.as_tensor(te, device=device)], mean, std, 128, device)
    psh = predict(model, test_shift, mean, std, 128, device)
    return {
        "arch": arch, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "epochs_run": len(history), "best_epoch": best_epoch, "stopped_by": stop,
        "train_seconds": round(time.time() - t0, 1),
        "train_images_per_s": round(len(tr) * len(history) / max(sum(h["seconds"] for h in history), 1e-9), 1),
        "val_accuracy": best, "test": metrics(yte, pte), "test_lab_shift": metrics(yte, psh),
        "n_train": len(tr), "n_val": len(va), "n_test": len(te), "history": history,
    }


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| arch | strategy | seed | epochs (best) | stopped by | test acc | bal. acc | macro F1 | ECE | "
             "lab-shift acc | train img/s | train s |", "|" + "---|" * 12]
    for r in results["runs"]:
        t, s = r["test"], r["test_lab_shift"]
        lines.append(f"| {r['arch']} | {r['strategy']} | {r['seed']} | {r['epochs_run']} ({r['best_epoch']}) | "
                     f"{r['stopped_by']} | {t['accuracy']:.4f} | {t['balanced_accuracy']:.4f} | {t['macro_f1']:.4f} | "
                     f"{t['ece']:.4f} | {s['accuracy']:.4f} | {r['train_images_per_s']} | {r['train_seconds']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--archs", default="inception_resnet_v2,nasnetalarge")
    ap.add_argument("--strategies", default="sgdc,per-class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--time-budget-s", type=float, default=110.0, help="wall-clock budget per run")
    ap.add_argument("--max-images", type=int, default=0, help="debug: use only this many images per split")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    splits = {s: read_split(args.splits / f"{s}-seed{args.seed}.csv") for s in args.strategies.split(",")}
    if args.max_images:
        for s, rows in splits.items():
            keep = []
            for sp in ("train", "val", "test"):
                keep += [r for r in rows if r["split"] == sp][: args.max_images]
            splits[s] = keep
    paths = sorted({r["path"] for rows in splits.values() for r in rows})
    index = {p: i for i, p in enumerate(paths)}
    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        arr = np.stack(list(pool.map(lambda p: decode(args.data, p, args.image_size), paths)))
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)
    test_paths = sorted({r["path"] for r in next(iter(splits.values())) if r["split"] == "test"})
    shifted = np.stack([lab_shift(arr[index[p]], np.random.default_rng(1000 + k)) for k, p in enumerate(test_paths)])
    test_shift = torch.from_numpy(shifted).permute(0, 3, 1, 2).contiguous().to(device)
    print(f"decoded {len(paths)} images in {time.time() - t0:.1f}s on {device}", flush=True)
    results = {
        "command": "python benchmarks/paper_scale_gpu.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
        "note": "from scratch (no ImageNet weights), one seed per cell, per-run wall-clock budget; "
                "group-aware common test set; lab shift = stain/white-balance/contrast/zoom/blur/JPEG",
        "runs": [],
    }
    for arch in args.archs.split(","):
        for strategy, rows in splits.items():
            r = run_one(arch, rows, images, index, test_shift, args, device)
            r.update(strategy=strategy, seed=args.seed)
            results["runs"].append(r)
            write(results, args.out)
            print(f"== {arch} {strategy}: test acc {r['test']['accuracy']:.4f}, lab-shift acc "
                  f"{r['test_lab_shift']['accuracy']:.4f}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results["total_seconds"] = round(time.time() - t0, 1)
    write(results, args.out)


if __name__ == "__main__":
    main()
