#!/usr/bin/env bash
# Run on the lent GPU machine (device tool): times a few iterations, then trains MAML
# Conv4-64 Omniglot 5-way 1-shot for as many iterations as fit in BUDGET seconds.
set -euo pipefail
export PYTHONPATH=src METAPRUNE_DATA=.devdata METAPRUNE_CACHE=/tmp/mpcache PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-330}
nvidia-smi --query-gpu=name --format=csv,noheader
per_it=$(python3 - <<'PY'
import time, torch
from metaprune.config import load_config
from metaprune.experiment import load_split, make_learner, train_sampler
cfg = load_config("configs/omniglot_5w1s_conv4.yaml")
d = load_split(cfg["data"], "train_split")
l = make_learner(cfg, d, "cuda"); s = train_sampler(cfg, d)
for i in range(3): l.meta_step([t.to("cuda") for t in s.batch(i * 32, 32)])
torch.cuda.synchronize(); t = time.perf_counter()
for i in range(10): l.meta_step([t_.to("cuda") for t_ in s.batch(i * 32, 32)])
torch.cuda.synchronize(); print((time.perf_counter() - t) / 10)
PY
)
iters=$(python3 -c "print(min(20000, int($BUDGET / $per_it) // 100 * 100))")
echo "seconds/iteration: $per_it -> $iters iterations"
python3 benchmarks/omniglot_maml.py --config configs/omniglot_5w1s_conv4.yaml \
  --run-dir "$OUT/run" --tag 5w1s_conv4_gpu --device cuda --results-dir "$OUT" \
  --set train.iterations=$iters --set train.checkpoint_every=500
