#!/bin/bash
# Reproduce docs/results/issue30/bench/: analysis p50 with the classifier before issue 30 vs the bundled one,
# A/B/A/B on the same fields, same machine, back to back (the segmenter and cell model are the bundled ones).
#   git worktree add --detach /tmp/before-issue30 564d96c   # the commit before the new classifier
#   bash benchmarks/bench_classifier_ab.sh /tmp/before-issue30/src/leukodx/assets/classifier
OLD=${1:?give the previous classifier directory}
IM=${IMAGES:-../shared/data/all-taleqani/Original/Pre}
OUT=${OUT:-docs/results/issue30/bench}
mkdir -p "$OUT"
for r in 1 2; do for side in old new; do
  if [ $side = old ]; then C=$OLD; else C=src/leukodx/assets/classifier; fi
  .venv/bin/leukodx bench --images "$IM" --n 60 --batch-size 8 --heatmap-n 0 --seed-n 0 --classifier "$C" \
      --out "$OUT/m_${side/new/margin}_$r.json" > /dev/null 2>&1
  python3 -c "import json;d=json.load(open('$OUT/m_${side/new/margin}_$r.json'));print('$side $r analysis p50', d['onnx']['analysis_p50_ms'], 'ms, classify p50', d['onnx'].get('classify_p50_ms'), 'ms')"
done; done
