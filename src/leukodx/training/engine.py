"""One training engine for every model the project trains: the slide classifier, the segmenters and the cell model.

    trainer = Trainer(model, loss_fn, train_loader, val_loader, cfg, out_dir,
                      metric_fn=accuracy_metric, metric_name="accuracy")
    history = trainer.fit()          # best weights are in `model` afterwards

A loader's batch is ``(x, *targets)``: one target (class indices, masks) or several (the two-output segmenter's
targets and the mask of known pixels; the cell model's allowed classes);
- `loss_fn(outputs, *targets) -> scalar tensor` (a masked loss takes its mask as a target);
- `metric_fn(outputs, *targets) -> float` on the concatenated validation outputs (CPU, float32): the selection
  and early-stopping metric, higher is better; for segmentation e.g. global Dice;
- `batch_metric_fn(outputs, *targets) -> float` (optional): shown in the progress bar while training;
- `prepare(batch, training) -> (x, *targets)` (optional): runs on the device on every batch, e.g. the cell
  model's batch augmentation or a resize to the model's input;
- `validate_fn(trainer) -> (loss, metric, extra record fields)` (optional) replaces the validation over
  `val_loader`, e.g. per source; `on_best(trainer)` runs whenever the metric improves (write the model early).

Schedules: cosine (linear warm-up), plateau, or "cosine_time" (warm-up over `warmup_steps`, then annealed over
the epochs or the time limit, whichever ends first). Stops: early stopping (`cfg.patience`), convergence
(`cfg.converge_patience`) and `cfg.time_limit_s` (no epoch is started that would end past it; with
"cosine_time" an epoch also stops once it is spent). Every epoch writes RUN/checkpoints/last.ckpt (weights,
optimizer, scheduler, scaler, RNG states), which `cfg.resume` continues; Ctrl-C saves one too; a non-finite
loss stops training with a clear error and keeps the last good checkpoint; the best weights go to best.pt.
Mixed precision (bf16, or fp16 with a gradient scaler) on CUDA only; DDP under torchrun (only rank 0 writes or
prints).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leukodx.errors import LeukodxError
from leukodx.training import distributed as dist_utils
from leukodx.training.config import TrainConfig, loss_flat

LAST = "last.ckpt"
BEST = "best.pt"


class TrainingError(LeukodxError):
    """Training cannot go on (non-finite loss, a checkpoint that does not fit, ...)."""


class TrainingInterrupted(LeukodxError):
    """Ctrl-C during training: a checkpoint was saved; the same command with --resume continues."""


class _NonFinite(Exception):
    def __init__(self, epoch: int, step: int, value: float):
        self.epoch, self.step, self.value = epoch, step, value


# ---------------------------------------------------------------------------------------------------------------
# set-up helpers


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeukodxError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.",
                           "Use --device cpu (or auto), or install a CUDA build of PyTorch on a GPU machine.")
    if name not in ("cpu", "cuda"):
        raise LeukodxError(f"Unknown device {name!r}.", "Use auto, cpu or cuda.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. Mixed precision is used on CUDA only."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def start_run(cfg: TrainConfig, *, data_hint: str, log_fn: Callable | None = None, cpu_threads: int | None = None):
    """What every training run starts with: refuses a run without --data or --out, or one that would overwrite a
    finished run without --resume; picks the device and `cpu_threads`; joins DDP under torchrun; seeds. Returns
    (out, device, dist info, log function; silent when quiet or not rank 0)."""
    if not cfg.data:
        raise LeukodxError("No data folder given.", f"Pass --data DATA ({data_hint}).")
    if not cfg.out:
        raise LeukodxError("No output folder given.", "Pass --out RUN.")
    out = Path(cfg.out)
    if (out / "config.json").is_file() and not cfg.resume and (out / "checkpoints" / "last.ckpt").is_file():
        raise LeukodxError(f"{out} already holds a trained run.",
                           "Choose another --out, or add --resume to continue that run's checkpoint.")
    device = resolve_device(cfg.device)
    if cpu_threads and (device.type == "cpu" or cfg.threads):
        torch.set_num_threads(cpu_threads)
    info = dist_utils.setup_distributed(device)
    seed_everything(cfg.seed)  # same init on every rank; DDP also broadcasts rank 0's weights
    log = (lambda m: None) if (cfg.quiet or not info.is_main) else (log_fn or (lambda m: print(m, flush=True)))
    return out, device, info, log


def run_split(cfg: TrainConfig, ds, split=None):
    """(split, train, val, test samples) of a field trainer: `split` (a SplitInfo) or cfg.split or a fresh
    group-aware split; each part cut to cfg.max_*_images (stratified; test with seed 0)."""
    from leukodx.data.datasets import load_split, samples_for_split, subset

    data = cfg.data
    assert data is not None  # start_run refuses a run without --data
    if split is None:
        split = load_split(data, cfg.split, strategy=cfg.split_strategy, seed=cfg.seed, val=cfg.val_fraction,
                           test=cfg.test_fraction, common_test=cfg.common_test, test_seed=cfg.test_seed)
    parts = [subset(samples_for_split(data, split, name, ds), n, seed) for name, n, seed in (
        ("train", cfg.max_train_images, cfg.seed), ("val", cfg.max_val_images, cfg.seed),
        ("test", cfg.max_test_images, 0))]
    return split, *parts


def split_record(cfg: TrainConfig, split, counts: dict) -> dict:
    """The data and split entries of config.json's "training" (`counts`: per part, per class)."""
    return {
        "data": str(Path(str(cfg.data)).resolve()),
        "split_file": split.summary.get("split_file"),
        "split_strategy": split.summary.get("strategy"),
        "split_seed": split.summary.get("seed"),
        "common_test": split.summary.get("common_test"),
        "test_seed": split.summary.get("test_seed"),
        "split_note": split.summary.get("note", "Split by field and duplicate group; not by patient."),
        "counts": {k: dict(Counter(s.label for s in v)) for k, v in counts.items()},
    }


def accuracy_metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to the targets (classification)."""
    if len(targets) == 0:
        return float("nan")
    return float((outputs.argmax(1) == targets).float().mean())


class Trainer:
    """Trains `model` with `loss_fn` on `train_loader`, early-stopping on `metric_fn` over `val_loader`."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        train_loader,
        val_loader,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        metric_fn: Callable | None = accuracy_metric,
        metric_name: str = "accuracy",
        batch_metric_fn: Callable | None = None,
        batch_metric_name: str = "acc",
        device: torch.device | None = None,
        checkpoints: bool = True,
        log_fn: Callable[[str], None] | None = None,
        prepare: Callable | None = None,
        validate_fn: Callable | None = None,
        on_best: Callable | None = None,
    ):
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.dist = dist_utils.setup_distributed(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.device.type == "cuda")
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.loss_fn, self.prepare, self.validate_fn, self.on_best = loss_fn, prepare, validate_fn, on_best
        self.train_loader, self.val_loader = train_loader, val_loader
        self.metric_fn, self.metric_name = metric_fn, metric_name
        self.batch_metric_fn, self.batch_metric_name = batch_metric_fn, batch_metric_name
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.checkpoints = checkpoints
        self.is_main = self.dist.is_main
        self.quiet = cfg.quiet or not self.is_main
        self.log_fn = log_fn
        self.amp = amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.steps_per_epoch = max(1, len(train_loader))
        self.t_fit = time.perf_counter()
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.stopped_by = "epochs"  # or "early stopping", "converged" or "time limit"
        self.resumed_from: int | None = None
        self.batch_losses: list[float] = []
        self.epoch_samples = 0

    # --- construction ------------------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "adam":
            # the study's optimiser: Adam, L2 weight decay only when asked for
            return torch.optim.Adam(groups, lr=cfg.lr)
        return torch.optim.AdamW(groups, lr=cfg.lr)

    def _make_scheduler(self):
        cfg = self.cfg
        if cfg.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.5,
                                                              patience=max(1, cfg.patience // 3 if cfg.patience else 2))
        if cfg.schedule == "cosine_time":
            def annealed(step: int) -> float:
                return min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * self.progress(step)))

            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, annealed)
        if cfg.schedule == "cosine":
            total = cfg.epochs * self.steps_per_epoch
            warm = min(cfg.warmup_epochs * self.steps_per_epoch, total // 2)

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                t = (step - warm) / max(1, total - warm)
                return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        return None

    # --- checkpoints -------------------------------------------------------------------------------------------
    def save_checkpoint(self, interrupted: bool = False) -> Path | None:
        if not (self.checkpoints and self.is_main):
            return None
        path = self.ckpt_dir / LAST
        _atomic_save({
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng": _rng_state(),
            "interrupted": interrupted,
            "arch": self.cfg.arch,
            "config": self.cfg.to_dict(),
        }, path)
        return path

    def _save_best(self) -> None:
        if self.checkpoints and self.is_main and self.best_state is not None:
            _atomic_save({"epoch": self.best_epoch, "metric": self.best_metric, "model": self.best_state},
                         self.ckpt_dir / BEST)

    def load_checkpoint(self) -> None:
        path = self.ckpt_dir / LAST
        if not path.is_file():
            raise TrainingError(f"--resume: no checkpoint at {path}.",
                                "Resume with the same --out as the interrupted run, or train without --resume.")
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
        except Exception as exc:  # noqa: BLE001
            raise TrainingError(f"--resume: checkpoint {path} cannot be read ({exc.__class__.__name__}).",
                                "Delete it and train from the start.") from None
        if ck.get("arch") != self.cfg.arch:
            raise TrainingError(f"--resume: {path} was written for arch {ck.get('arch')!r}, not {self.cfg.arch!r}.",
                                "Resume with the settings of the interrupted run (its run_config.yaml via --config).")
        try:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(f"--resume: {path} does not fit this model ({str(exc).splitlines()[0]}).",
                                "Resume with the settings of the interrupted run (its run_config.yaml via --config).") from None
        if self.scheduler is not None and ck.get("scheduler") is not None:
            self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler") is not None:
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch = int(ck["epoch"])
        self.best_metric, self.best_epoch = ck.get("best_metric"), ck.get("best_epoch")
        self.bad_epochs = int(ck.get("bad_epochs", 0))
        self.history = list(ck.get("history", []))
        best = self.ckpt_dir / BEST
        if best.is_file():
            self.best_state = torch.load(best, map_location="cpu", weights_only=False)["model"]
        if "rng" in ck:
            _set_rng_state(ck["rng"])
        self.resumed_from = self.epoch

    # --- steps -------------------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def progress(self, step: int) -> float:
        """How much of the run is done after `step` steps: of the steps, or of the time limit when further."""
        p = step / max(1, self.cfg.epochs * self.steps_per_epoch)
        if self.cfg.time_limit_s:
            p = max(p, (time.perf_counter() - self.t_fit) / self.cfg.time_limit_s)
        return min(1.0, p)

    def _to_device(self, batch, training: bool = False):
        """(x, targets) of a batch on the device, through `prepare`."""
        nb = self.device.type == "cuda"
        batch = tuple(t.to(self.device, non_blocking=nb) for t in batch)
        if self.prepare is not None:
            batch = tuple(self.prepare(batch, training))
        x, *targets = batch
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets

    def _train_epoch(self, epoch: int, progress, task) -> tuple[float, float | None]:
        self.net.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        total_loss, n_seen, metric_sum, metric_n = 0.0, 0, 0.0, 0
        self.batch_losses = []
        timed = self.cfg.schedule == "cosine_time" and self.cfg.time_limit_s
        for step, batch in enumerate(self.train_loader):
            if timed and self.progress(0) >= 1.0 and step:
                break  # the time limit is spent
            x, y = self._to_device(batch, training=True)
            with self._autocast():
                out = self.net(x)
                loss = self.loss_fn(out.float(), *y)
            bad = not bool(torch.isfinite(loss.detach()))
            if dist_utils.all_reduce_flag(bad, self.dist, self.device):
                raise _NonFinite(epoch, step, float(loss.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                self.scheduler.step()
            bs = x.shape[0]
            self.batch_losses.append(float(loss.detach()))
            total_loss += self.batch_losses[-1] * bs
            n_seen += bs
            if self.batch_metric_fn is not None:
                with torch.no_grad():
                    metric_sum += self.batch_metric_fn(out.detach().float(), *y) * bs
                metric_n += bs
            if progress is not None:
                info = f"loss {total_loss / n_seen:.4f}"
                if metric_n:
                    info += f"  {self.batch_metric_name} {metric_sum / metric_n:.3f}"
                if self.best_metric is not None:
                    info += f"  best val {self.metric_name} {self.best_metric:.4f}"
                progress.update(task, advance=1, info=info,
                                description=f"epoch {epoch + 1}/{self.cfg.epochs}")
        self.epoch_samples = n_seen
        return total_loss / max(1, n_seen), (metric_sum / metric_n if metric_n else None)

    def _sync_buffers(self) -> None:
        """BatchNorm running statistics from rank 0 on every rank (each rank's last forward updated its own)."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        for b in self.model.buffers():
            dist.broadcast(b.data, 0)

    @torch.no_grad()
    def predict(self, loader) -> tuple[torch.Tensor, ...]:
        """Outputs (float32, CPU) and each target for every item of `loader`, in order."""
        self.model.eval()
        outs: list[torch.Tensor] = []
        ys: list[list[torch.Tensor]] = []
        for batch in loader:
            x, y = self._to_device(batch)
            with self._autocast():
                out = self.model(x)
            outs.append(out.float().cpu())
            ys.append([t.cpu() for t in y])
        if not outs:
            return torch.empty(0), torch.empty(0)
        return (torch.cat(outs), *(torch.cat(t) for t in zip(*ys, strict=True)))

    def validate(self) -> tuple[float, float, dict]:
        """(loss, metric, extra fields of the epoch's record) on the validation data."""
        if self.validate_fn is not None:
            return self.validate_fn(self)
        outs, *ys = self.predict(self.val_loader)
        if len(outs) == 0:
            return float("nan"), float("nan"), {}
        loss = float(self.loss_fn(outs, *ys))
        metric = float(self.metric_fn(outs, *ys)) if self.metric_fn is not None else -loss
        return loss, metric, {}

    def _improved(self, metric: float) -> bool:
        # no validation data (nan): keep the latest weights
        return (math.isnan(metric) or self.best_metric is None or math.isnan(self.best_metric)
                or metric > self.best_metric)

    def _log(self, msg: str) -> None:
        if not self.quiet and self.log_fn is not None:
            self.log_fn(msg)

    def run_record(self, train_seconds: float, wall_seconds: float) -> dict:
        """What a model's config.json "training" says of the run: epochs, why it stopped, times, settings."""
        return {"epochs_run": len(self.history), "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "stopped_by": self.stopped_by, "channels_last": self.channels_last,
                "resumed_from_epoch": self.resumed_from, "train_seconds": round(train_seconds, 1),
                "wall_seconds": round(wall_seconds, 1), "torch_version": torch.__version__,
                "config": self.cfg.to_dict()}

    # --- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        if cfg.resume:
            self.load_checkpoint()
            self._log(f"resumed from {self.ckpt_dir / LAST} after epoch {self.epoch}")
        progress, task = self._progress()
        self.t_fit = t_fit = time.perf_counter()
        try:
            while self.epoch < cfg.epochs and not self.stopped_early:
                epoch = self.epoch
                t0 = time.perf_counter()
                train_loss, train_metric = self._train_epoch(epoch, progress, task)
                self._sync_buffers()
                train_seconds = time.perf_counter() - t0
                val_loss, val_metric, extra = self.validate()
                if not math.isfinite(val_loss) and (self.validate_fn is not None or len(self.val_loader)):
                    raise _NonFinite(epoch, -1, val_loss)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_metric)
                improved = self._improved(val_metric)
                if improved:
                    self.best_metric, self.best_epoch, self.bad_epochs = val_metric, epoch + 1, 0
                    self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                    self._save_best()
                else:
                    self.bad_epochs += 1
                record = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    f"train_{self.batch_metric_name}": train_metric,
                    "val_loss": val_loss,
                    f"val_{self.metric_name}": val_metric,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "epoch_seconds": round(time.perf_counter() - t0, 3),
                    "best": improved,
                    "first_batches_loss": float(np.mean(self.batch_losses[:5])) if self.batch_losses else None,
                    "last_batches_loss": float(np.mean(self.batch_losses[-5:])) if self.batch_losses else None,
                    "samples_per_second": round(self.epoch_samples / max(train_seconds, 1e-9), 2),
                    **extra,
                }
                self.history.append(record)
                self.epoch = epoch + 1
                if improved and self.on_best is not None and self.is_main:
                    self.on_best(self)
                if cfg.patience and self.bad_epochs >= cfg.patience:
                    self.stopped_early, self.stopped_by = True, "early stopping"
                elif loss_flat(self.history, cfg.converge_patience, cfg.converge_tolerance):
                    self.stopped_early, self.stopped_by = True, "converged"  # validation loss flat
                elif cfg.time_limit_s and self.epoch < cfg.epochs and \
                        time.perf_counter() - t_fit + record["epoch_seconds"] > cfg.time_limit_s:
                    self.stopped_early, self.stopped_by = True, "time limit"  # the next epoch would end past it
                self.stopped_early = dist_utils.broadcast_flag(self.stopped_early, self.dist, self.device)
                self.save_checkpoint()
                tm = f", train {self.batch_metric_name} {train_metric:.3f}" if train_metric is not None else ""
                self._log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}{tm}, val loss {val_loss:.4f}, "
                          f"val {self.metric_name} {val_metric:.4f}{' (best)' if improved else ''}, "
                          f"{record['epoch_seconds']:.1f} s")
                if self.stopped_early and self.stopped_by == "time limit":
                    self._log(f"stopped by the time limit of {cfg.time_limit_s:.0f} s after epoch {self.epoch} "
                              f"(best {self.best_metric:.4f} at epoch {self.best_epoch})")
                elif self.stopped_early:
                    why = (f"val loss flat (within {cfg.converge_tolerance:.0%}) for {cfg.converge_patience} epochs"
                           if self.stopped_by == "converged" else f"no better val {self.metric_name} for "
                           f"{cfg.patience} epochs")
                    self._log(f"early stop: {why} (best {self.best_metric:.4f} at epoch {self.best_epoch})")
        except KeyboardInterrupt:
            path = self.save_checkpoint(interrupted=True)
            where = f"a checkpoint was saved to {path}" if path else "no checkpoint was written (checkpoints off)"
            raise TrainingInterrupted(
                f"Training interrupted during epoch {self.epoch + 1}; {where}.",
                "Run the same command again with --resume to continue from it." if path else "",
            ) from None
        except _NonFinite as nf:
            where = f"epoch {nf.epoch + 1}, step {nf.step + 1}" if nf.step >= 0 else f"epoch {nf.epoch + 1} (validation)"
            last = self.ckpt_dir / LAST
            kept = (f"the last good checkpoint (after epoch {self.epoch}) is kept at {last}"
                    if self.checkpoints and last.is_file() else "no epoch had completed, so there is no checkpoint")
            raise TrainingError(
                f"The loss became {nf.value} at {where}; training stopped and {kept}.",
                "Lower --lr (e.g. by 10x), keep --grad-clip on, or check the images; --resume continues from the "
                "checkpoint.",
            ) from None
        finally:
            if progress is not None:
                progress.stop()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "history.json").write_text(json.dumps(self.history, indent=2))
        return self.history

    def _progress(self):
        if self.quiet:
            return None, None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        total = self.cfg.epochs * self.steps_per_epoch
        task = progress.add_task(f"epoch {self.epoch + 1}/{self.cfg.epochs}", total=total,
                                 completed=self.epoch * self.steps_per_epoch, info="")
        progress.start()
        if self.log_fn is None:
            self.log_fn = progress.console.print
        return progress, task
