#!/bin/bash
# Reproduce docs/results/issue29-transfer/bench_ab/: needs /work/wt/old (git worktree add --detach /work/wt/old f1f1d6a).
# A/B/A/B: old cell model (f1f1d6a worktree) vs new (main), same fields, same machine, back to back
cd /work/main
IM=../shared/data/all-taleqani/Original/Pre
for r in 1 2; do
  for side in old new; do
    if [ $side = old ]; then SRC=/work/wt/old/src; else SRC=/work/main/src; fi
    PYTHONPATH=$SRC .venv/bin/leukodx bench --images $IM --n 60 --batch-size 8 --heatmap-n 0 --seed-n 0 --out /tmp/bench_${side}_$r.json > /tmp/bench_${side}_$r.log 2>&1
    python3 -c "
import json;d=json.load(open('/tmp/bench_${side}_$r.json'))
def walk(x,p=''):
  if isinstance(x,dict):
    for k,v in x.items(): walk(v,p+'.'+k)
  elif 'p50' in p and isinstance(x,(int,float)): print('$side $r',p,x)
walk(d)" | head -12
  done
done
