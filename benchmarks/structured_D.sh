#!/usr/bin/env bash
# Structured ANP on ResNet-12 (setting D, REDUCED CPU budget): anp-structured vs L1-norm and
# random channels and a same-width network meta-trained from scratch (paired accuracy), then the
# device report (bytes, MFLOPs, batch-1 latency, adaptation peak memory). One process at a time,
# one thread:
#   METAPRUNE_DATA=/work/shared/data nohup bash benchmarks/structured_D.sh > runs/structured_D.log 2>&1 &
# As run on 2026-12-01 (machine shared, load 7-10): step 1 was stopped once anp-structured had
# finished (its 50/70/85% rows are in structured_D_reduced.md); the baselines and the scratch
# control ran at 70% only (step 2), every step reusing the same run directory and dense model.
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=runs/structured_D
BUDGET="REDUCED CPU budget (not setting D's): dense 300 iterations x 8 tasks, 10 re-training iterations x 8 tasks per unstructured-equivalent round (structured: min(r, 3) rounds with the same total), 200 test tasks; 2-core CPU shared with other jobs (load average 7-10), one thread: latencies are noisy."
# 1. anp-structured at 50/70/85% (stopped here before the baselines)
python benchmarks/sparsity_curve.py --setting D --iterations 300 --retrain-iters 10 \
    --set train.meta_batch=8 --tasks 200 --report-at 0.5,0.7,0.85 --run-dir "$RUN" \
    --methods anp-structured,l1-structured,random-structured,scratch-structured \
    --name structured_D_reduced --no-progress --note "${BUDGET/load average 7-10/load average 6-7}"
# 2. all four at 70% (the target point)
python benchmarks/sparsity_curve.py --setting D --iterations 300 --retrain-iters 10 \
    --set train.meta_batch=8 --tasks 200 --report-at 0.7 --run-dir "$RUN" \
    --methods anp-structured,l1-structured,random-structured,scratch-structured \
    --name structured_D_reduced_70 --no-progress --note "$BUDGET Only 70% here (the issue's target point; the machine was too busy for the baselines and the scratch control at 50/85%); anp-structured at 50/70/85% is in structured_D_reduced.md (same run, same dense model, same cached models and evaluations)."
# 3. device report
python benchmarks/device_report.py --model dense=$RUN/dense \
    --model anp50=$RUN/anp-structured/s50 --model anp70=$RUN/anp-structured/s70 \
    --model anp85=$RUN/anp-structured/s85 --model l1_70=$RUN/l1-structured/s70 \
    --model random70=$RUN/random-structured/s70 --model scratch70=$RUN/scratch-structured/s70 \
    --dataset omniglot --split test --option image_size=28 --option rotations=true \
    --tasks 50 --reps-infer 100 --reps-adapt 10 --mem-reps 2 \
    --out benchmarks/results/device_report_structured_D_reduced \
    --note "REDUCED: models of runs/structured_D (dense 300 iterations x 8 tasks; see structured_D_reduced.md and structured_D_reduced_70.md); 2-core CPU shared with other jobs (load average 7-10), one thread: latencies are noisy, memory is not affected by the load." \
    --note "accuracy here: 50 runtime tasks (support-statistics BatchNorm); the paired accuracy on 200 tasks is in the sparsity tables"
