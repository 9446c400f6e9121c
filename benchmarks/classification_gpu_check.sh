#!/usr/bin/env bash
# GPU smoke check of `train classify --preset paper --device cuda` (AMP bf16, then fp16 with a gradient scaler,
# then --resume) on synthetic 224 px smears. Needs only torch/torchvision/timm/typer/rich/pyyaml (no pydantic).
# Usage (on a CUDA machine, from the repository root): OUT=/tmp/out bash benchmarks/classification_gpu_check.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/leukodx-gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
$PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))"
$PY -c "from leukodx.data.synthetic import make_synthetic_dataset as m; m('/tmp/lx-syn', per_class=16, size=224, seed=0)"
rm -rf /tmp/lx-run /tmp/lx-run16
time $PY -m leukodx train classify --data /tmp/lx-syn --preset paper --device cuda --epochs 2 --workers 2 \
  --out /tmp/lx-run 2>&1 | tr '\r' '\n' | grep -v "━" | tail -n 20
$PY - <<'PY'
import json, sys
c = json.load(open("/tmp/lx-run/config.json"))
t = c["training"]
print("amp", t["amp"], "device", t["device"], "epochs", t["epochs_run"], "train s", t["train_seconds"],
      "epoch s", [h["epoch_seconds"] for h in json.load(open("/tmp/lx-run/history.json"))])
print("pydantic imported:", "pydantic" in sys.modules)
PY
cp /tmp/lx-run/config.json "$OUT/paper_config.json"; cp /tmp/lx-run/history.json "$OUT/paper_history.json"
time $PY -m leukodx train classify --data /tmp/lx-syn --device cuda --amp fp16 --epochs 2 --image-size 128 \
  --out /tmp/lx-run16 --quiet && echo "fp16 ok"
$PY -m leukodx train classify --data /tmp/lx-syn --device cuda --amp fp16 --epochs 3 --image-size 128 \
  --out /tmp/lx-run16 --quiet --resume && $PY -c "
import json; h = json.load(open('/tmp/lx-run16/history.json')); c = json.load(open('/tmp/lx-run16/config.json'))
print('resume ok: epochs', [r['epoch'] for r in h], 'resumed from', c['training']['resumed_from_epoch'], 'amp', c['training']['amp'])"
