#!/usr/bin/env bash
# Structured ANP on ResNet-12 (setting D) at the CPU budget of sparsity_D.md (dense 1000
# iterations x 8 tasks, 40 re-training iterations x 8 tasks per unstructured-equivalent round,
# 600 test tasks; issue 21): anp-structured vs L1-norm and random channels and the same widths
# meta-trained from scratch at 50/70/85% of the weights removed, anp-structured under
# --memory-budget 0.45 at 70%, then the device report. One thread per process, two processes at
# most (the 2-core CPU). Steps, each resumable from the run folder's caches:
#   export METAPRUNE_DATA=/work/shared/data
#   bash benchmarks/structured_D_cpu.sh dense          # first
#   nohup bash benchmarks/structured_D_cpu.sh a &      # then a and b, side by side or in turn
#   nohup bash benchmarks/structured_D_cpu.sh b &
#   nohup bash benchmarks/structured_D_cpu.sh scratch 0.5 &   # the scratch control at 50 and
#   nohup bash benchmarks/structured_D_cpu.sh scratch 0.85 &  # 85% (after a), side by side
#   bash benchmarks/structured_D_cpu.sh collect        # then collect, then device, alone
#   bash benchmarks/structured_D_cpu.sh device
# (no argument: all of them, a and b side by side)
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=runs/structured_D_cpu
PARTIAL="$RUN/partial"  # per-job results files, not committed (the collect step reads the caches)
COMMON=(--setting D --iterations 1000 --retrain-iters 40 --set train.meta_batch=8
        --run-dir "$RUN" --no-progress)
BUDGET="CPU budget of sparsity_D.md (not setting D's 2000 x 16): dense 1000 iterations x 8 tasks, 40 re-training iterations x 8 tasks per unstructured-equivalent round (structured: min(r, 3) rounds with the same total), 600 test tasks; 2-core CPU, one thread per job, at most two jobs at once (benchmarks/structured_D_cpu.sh)."
mkdir -p "$PARTIAL"
step_dense() {  # the dense model (a and b start from it)
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --methods none --results-dir "$PARTIAL" \
        --name dense
}
step_a() {  # the scratch control at 70% only (the target point: 1280 iterations, 28 minutes)
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.5,0.7,0.85 \
        --methods anp-structured --results-dir "$PARTIAL" --name job_a
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.7 \
        --methods anp-structured,scratch-structured --results-dir "$PARTIAL" --name job_a70
}
step_scratch() {  # the scratch control at one more point ($1: 0.5 or 0.85; resumable)
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at "$1" \
        --methods anp-structured,scratch-structured --results-dir "$PARTIAL" --name "job_a2_$1"
}
step_b() {
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.5,0.7,0.85 \
        --methods l1-structured,random-structured --results-dir "$PARTIAL" --name job_b
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.7 --methods anp-structured \
        --memory-budget 0.45 --results-dir "$PARTIAL" --name job_c
}
step_collect() {  # results from the caches, paired against anp-structured on the same 600 tasks
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.5,0.7,0.85 \
        --methods anp-structured,l1-structured,random-structured,scratch-structured \
        --name structured_D_cpu \
        --note "$BUDGET scratch-structured: the widths of anp-structured meta-trained from a random initialisation on as many tasks (the control)."
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.7 \
        --methods anp-structured,l1-structured,random-structured,scratch-structured \
        --name structured_D_cpu_70 --note "$BUDGET The 70% rows of structured_D_cpu.md with the scratch control."
    python benchmarks/paired_vs_anp.py --setting D --run-dir "$RUN" --reference anp-structured \
        --name structured_D_cpu  # every method and sparsity of the run folder
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --report-at 0.7 --methods anp-structured \
        --memory-budget 0.45 --name structured_D_cpu_mem45 \
        --note "$BUDGET Same run folder, dense model and test tasks as structured_D_cpu.md; channel widths within 0.45 of the dense model's activations (for the 0.5x adaptation-memory target)."
    python benchmarks/paired_vs_anp.py --setting D --run-dir "$RUN" \
        --reference anp-structured-mem0.45 --name structured_D_cpu_mem45
}
step_device() {  # alone on the machine
    python benchmarks/device_report.py --model dense=$RUN/dense \
        --model anp50=$RUN/anp-structured/s50 --model anp70=$RUN/anp-structured/s70 \
        --model anp85=$RUN/anp-structured/s85 --model mem45_70=$RUN/anp-structured-mem0.45/s70 \
        --model l1_70=$RUN/l1-structured/s70 --model random70=$RUN/random-structured/s70 \
        --model scratch70=$RUN/scratch-structured/s70 \
        --dataset omniglot --split test --option image_size=28 --option rotations=true \
        --tasks 100 --reps-infer 200 --reps-adapt 20 --mem-reps 3 \
        --out benchmarks/results/device_report_structured_D_cpu \
        --note "Models of $RUN (dense 1000 iterations x 8 tasks; see structured_D_cpu.md and structured_D_cpu_mem45.md); 2-core CPU, one thread, run alone." \
        --note "accuracy here: 100 runtime tasks (support-statistics BatchNorm); the paired accuracy on 600 tasks is in the sparsity tables"
}
case "${1:-all}" in
    dense|a|b|collect|device) "step_$1" ;;
    scratch) step_scratch "${2:?usage: $0 scratch 0.5|0.85}" ;;
    all) step_dense
         step_a > "$RUN/job_a.log" 2>&1 & A=$!
         step_b > "$RUN/job_b.log" 2>&1 & B=$!
         wait "$A"; wait "$B"
         step_collect; step_device ;;
    *) echo "usage: $0 [dense|a|b|scratch 0.5|scratch 0.85|collect|device]" >&2; exit 2 ;;
esac
