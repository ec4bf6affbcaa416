#!/usr/bin/env bash
# Run on the lent GPU machine (device tool). For each "TAG CONFIG BUDGET [--set k=v ...]" spec
# (one per line on stdin): time 10 iterations, then meta-train for as many iterations as fit in
# BUDGET seconds, evaluate on 600 fixed tasks, and leave $OUT/TAG.tar (run folder) plus
# $OUT/omniglot_maml_TAG.{csv,md}.
# DEVICE (default cuda) and MIN_ITERATIONS (default 100) let tests/test_benchmarks_smoke.py run
# it on the CPU with a tiny config; METAPRUNE_DATA defaults to the device machine's .devdata.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
MIN_ITERATIONS=${MIN_ITERATIONS:-100}
export PYTHONPATH=src METAPRUNE_DATA=${METAPRUNE_DATA:-.devdata} METAPRUNE_CACHE=${METAPRUNE_CACHE:-/tmp/mpcache} PYTHONUNBUFFERED=1
if [[ $DEVICE == cuda* ]]; then nvidia-smi --query-gpu=name --format=csv,noheader; fi
while read -r tag config budget sets; do
  [[ -z "$tag" ]] && continue
  per_it=$(DEVICE=$DEVICE python3 - "$config" $sets <<'PY'
import os, sys, time, torch
from metaprune.config import load_config
from metaprune.experiment import load_split, make_learner, train_sampler
args, dev = sys.argv[2:], os.environ["DEVICE"]
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
cfg = load_config(sys.argv[1], [a for a in args if a != "--set"])
d = load_split(cfg["data"], "train_split")
l = make_learner(cfg, d, dev); s = train_sampler(cfg, d); b = cfg["train"]["meta_batch"]
for i in range(3): l.meta_step([t.to(dev) for t in s.batch(i * b, b)])
sync(); t0 = time.perf_counter()
for i in range(10): l.meta_step([t.to(dev) for t in s.batch(i * b, b)])
sync(); print((time.perf_counter() - t0) / 10)
PY
)
  iters=$(python3 -c "print(max($MIN_ITERATIONS, min(20000, int($budget / $per_it) // 100 * 100)))")
  echo "$tag: $per_it s/iteration -> $iters iterations"
  python3 benchmarks/omniglot_maml.py --config "$config" --run-dir "${RUN_ROOT:-/tmp}/$tag" --tag "$tag" \
    --device "$DEVICE" --results-dir "$OUT" --set train.iterations=$iters \
    --set train.checkpoint_every=500 $sets 2>&1 | grep -v "it/s\]\|s/it\]" | tail -25
  tar -C "${RUN_ROOT:-/tmp}" -cf "$OUT/$tag.tar" "$tag"
done
