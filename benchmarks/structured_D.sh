#!/usr/bin/env bash
# Structured ANP on ResNet-12 (setting D, REDUCED CPU budget): anp-structured vs L1-norm and
# random channels and a same-width network meta-trained from scratch at ~50/70/85% of the
# weights (paired accuracy), then the device report (bytes, MFLOPs, batch-1 latency, adaptation
# peak memory) of every model. One process at a time, one thread:
#   METAPRUNE_DATA=/work/shared/data nohup bash benchmarks/structured_D.sh > runs/structured_D.log 2>&1 &
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=runs/structured_D
NOTE="REDUCED CPU budget (not setting D's): dense 300 iterations x 8 tasks, 10 re-training iterations x 8 tasks per unstructured-equivalent round (structured: min(r, 3) rounds with the same total), 200 test tasks; 2-core CPU shared with other jobs (load average 6-7), one thread: latencies are noisy."
python benchmarks/sparsity_curve.py --setting D --iterations 300 --retrain-iters 10 \
    --set train.meta_batch=8 --tasks 200 --report-at 0.5,0.7,0.85 --run-dir "$RUN" \
    --methods anp-structured,l1-structured,random-structured,scratch-structured \
    --name structured_D_reduced --no-progress --note "$NOTE"
models=(--model "dense=$RUN/dense")
for m in anp-structured l1-structured random-structured scratch-structured; do
    for s in 50 70 85; do models+=(--model "${m%-structured}$s=$RUN/$m/s$s"); done
done
python benchmarks/device_report.py "${models[@]}" --dataset omniglot --split test \
    --option image_size=28 --option rotations=true --tasks 50 --reps-infer 100 --reps-adapt 10 --mem-reps 2 \
    --out benchmarks/results/device_report_structured_D_reduced \
    --note "$NOTE" --note "accuracy here: 50 runtime tasks (support-statistics BatchNorm); the paired accuracy on 200 tasks is in structured_D_reduced.md"
