"""DistributedDataParallel on CPU: 2 processes (torchrun, gloo) train on synthetic smears and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent('''
    import hashlib, json, sys
    import torch
    torch.set_num_threads(1)
    from leukodx.training.config import resolve_config
    from leukodx.data.datasets import ClassificationDataset, EpochSampler, load_split, samples_for_split
    from leukodx.data.transforms import classification_transforms
    from leukodx.models.registry import create_model
    from leukodx.training import distributed as du
    from leukodx.training.engine import Trainer, seed_everything

    data, out = sys.argv[1], sys.argv[2]
    info = du.setup_distributed(torch.device("cpu"))
    seed_everything(0)
    model = create_model("classify", "smearnet", num_classes=4)
    if info.rank == 1:  # a different start on rank 1: DDP must broadcast rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05)
    split = load_split(data, strategy="sgdc", seed=0)
    classes = ["Benign", "Early", "Pre", "Pro"]
    train_tf, eval_tf = classification_transforms(32, "light")
    train = ClassificationDataset(samples_for_split(data, split, "train"), classes, train_tf)
    val = ClassificationDataset(samples_for_split(data, split, "val"), classes, eval_tf)
    sampler = EpochSampler(len(train), labels=train.labels, seed=0, num_replicas=info.world_size, rank=info.rank)
    seen = list(iter(sampler))
    loader = torch.utils.data.DataLoader(train, batch_size=4, sampler=sampler, drop_last=True)
    vloader = torch.utils.data.DataLoader(val, batch_size=16)
    cfg = resolve_config("classify", overrides={"epochs": 2, "image_size": 32, "quiet": True, "patience": 0,
                                                "lr": 3e-3})
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model, torch.nn.CrossEntropyLoss(), loader, vloader, cfg, out + "/run")
    trainer.fit()
    h = hashlib.sha256()
    for name, t in sorted(trainer.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(trainer.model.parameters(), before))
    with open(f"{out}/rank{info.rank}.json", "w") as f:
        json.dump({"rank": info.rank, "world_size": info.world_size, "sha256": h.hexdigest(), "moved": moved,
                   "seen": seen, "n_train": len(train), "history": len(trainer.history)}, f)
    du.cleanup()
''')


@pytest.fixture(scope="module")
def tiny_smears(tmp_path_factory):
    from leukodx.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ddp-smears"), per_class=6, size=64, seed=2)


def test_two_cpu_ranks_stay_in_sync(tiny_smears, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tiny_smears), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert all(x["world_size"] == 2 and x["history"] == 2 for x in ranks)
    assert ranks[0]["sha256"] == ranks[1]["sha256"], "the ranks' weights differ after training"
    assert ranks[0]["moved"] > 0  # training changed the weights
    # each rank saw its own half of the (oversampled) epoch
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"])
    assert ranks[0]["seen"] != ranks[1]["seen"]
    # only rank 0 wrote the run's files
    assert (tmp_path / "run" / "history.json").is_file()
