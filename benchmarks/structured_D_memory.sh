#!/usr/bin/env bash
# Structured ANP on ResNet-12 under a memory budget (setting D, REDUCED CPU budget, as
# structured_D.sh): at 70% of the weights removed, the uniform widths against the widths of
# --memory-budget 0.5 and 0.45 (the same weight count), on one dense model and the same 200 test tasks,
# paired; then the device report (adaptation peak memory, batch-1 latency). One process at a
# time, one thread:
#   METAPRUNE_DATA=/work/shared/data nohup bash benchmarks/structured_D_memory.sh > runs/structured_D_memory.log 2>&1 &
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=runs/structured_D_memory
BUDGET="REDUCED CPU budget (not setting D's): dense 300 iterations x 8 tasks, 10 re-training iterations x 8 tasks per unstructured-equivalent round (structured: 3 rounds with the same total), 200 test tasks; 2-core CPU, one thread."
# 1. uniform widths (the default); trains the dense model
python benchmarks/sparsity_curve.py --setting D --iterations 300 --retrain-iters 10 \
    --set train.meta_batch=8 --tasks 200 --report-at 0.7 --run-dir "$RUN" \
    --methods anp-structured --no-progress --name structured_D_memory_uniform \
    --note "$BUDGET Uniform widths (the default), the reference for structured_D_memory_budget50.md."
# 2. --memory-budget 0.5 and 0.45 on the same dense model (0.45: the measured peak at 0.5 was
#    0.52x, above the activations' 0.49x), each paired against the uniform widths
for B in 0.5 0.45; do
    N=$(python -c "print(round(100 * $B))")  # results names: budget50, budget45
    python benchmarks/sparsity_curve.py --setting D --iterations 300 --retrain-iters 10 \
        --set train.meta_batch=8 --tasks 200 --report-at 0.7 --run-dir "$RUN" \
        --methods anp-structured --no-progress --memory-budget "$B" \
        --name "structured_D_memory_budget$N" \
        --note "$BUDGET Same run folder, dense model and test tasks as structured_D_memory_uniform.md."
    # 3. memory-budget widths minus uniform widths (and minus the other budget), paired
    python benchmarks/paired_vs_anp.py --setting D --run-dir "$RUN" \
        --reference "anp-structured-mem$B" --name "structured_D_memory_budget$N"
done
# 4. device report: measured adaptation peak memory and latency
python benchmarks/device_report.py --model dense=$RUN/dense \
    --model uniform70=$RUN/anp-structured/s70 --model budget50_70=$RUN/anp-structured-mem0.5/s70 \
    --model budget45_70=$RUN/anp-structured-mem0.45/s70 \
    --dataset omniglot --split test --option image_size=28 --option rotations=true \
    --tasks 50 --reps-infer 100 --reps-adapt 10 --mem-reps 2 \
    --out benchmarks/results/device_report_structured_D_memory \
    --note "REDUCED: models of $RUN (dense 300 iterations x 8 tasks; see structured_D_memory_uniform.md, structured_D_memory_budget50.md and structured_D_memory_budget45.md); 2-core CPU, one thread." \
    --note "accuracy here: 50 runtime tasks (support-statistics BatchNorm); the paired accuracy on 200 tasks is in the sparsity tables"
