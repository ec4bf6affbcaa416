#!/usr/bin/env bash
# Structured ANP on ResNet-12, setting D at the CPU budget of structured_D_cpu.sh (same run
# folder, dense model and 600 test tasks), with channel widths in multiples (--round-to; issue
# 21's batch-1 latency target): 70% of the weights removed, the uniform widths rounded to
# multiples of 8, and the --memory-budget 0.45 widths rounded to multiples of 4; then the device
# report with the dense and 70% models of structured_D_cpu.sh beside them. Needs
# structured_D_cpu.sh's dense, a and b steps first. One thread per process, two at most:
#   export METAPRUNE_DATA=/work/shared/data
#   nohup bash benchmarks/structured_D_round.sh r8 &       # side by side
#   nohup bash benchmarks/structured_D_round.sh mem45r4 &
#   bash benchmarks/structured_D_round.sh collect          # then collect, then device, alone
#   bash benchmarks/structured_D_round.sh device
set -euo pipefail
export OMP_NUM_THREADS=1
RUN=runs/structured_D_cpu
PARTIAL="$RUN/partial"
COMMON=(--setting D --iterations 1000 --retrain-iters 40 --set train.meta_batch=8
        --run-dir "$RUN" --no-progress --report-at 0.7 --methods anp-structured)
BUDGET="CPU budget of sparsity_D.md (not setting D's 2000 x 16): dense 1000 iterations x 8 tasks, 40 re-training iterations x 8 tasks per unstructured-equivalent round (3 structured rounds at 70%), 600 test tasks; the run folder, dense model and test tasks of structured_D_cpu.md (benchmarks/structured_D_round.sh)."
mkdir -p "$PARTIAL"
step_r8() {
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --round-to 8 --results-dir "$PARTIAL" \
        --name job_r8
}
step_mem45r4() {
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --memory-budget 0.45 --round-to 4 \
        --results-dir "$PARTIAL" --name job_mem45r4
}
step_collect() {  # paired against every other model of the run folder on the same 600 tasks
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --round-to 8 --name structured_D_cpu_r8 \
        --note "$BUDGET Channel widths: the uniform widths rounded to multiples of 8 at no more weights or activations."
    python benchmarks/paired_vs_anp.py --setting D --run-dir "$RUN" \
        --reference anp-structured-r8 --name structured_D_cpu_r8
    python benchmarks/sparsity_curve.py "${COMMON[@]}" --memory-budget 0.45 --round-to 4 \
        --name structured_D_cpu_mem45_r4 \
        --note "$BUDGET Channel widths: the --memory-budget 0.45 widths rounded to multiples of 4 at no more weights or activations."
    python benchmarks/paired_vs_anp.py --setting D --run-dir "$RUN" \
        --reference anp-structured-mem0.45-r4 --name structured_D_cpu_mem45_r4
}
step_device() {  # alone on the machine
    python benchmarks/device_report.py --model dense=$RUN/dense \
        --model anp70=$RUN/anp-structured/s70 --model r8_70=$RUN/anp-structured-r8/s70 \
        --model mem45_70=$RUN/anp-structured-mem0.45/s70 \
        --model mem45r4_70=$RUN/anp-structured-mem0.45-r4/s70 \
        --model anp85=$RUN/anp-structured/s85 \
        --dataset omniglot --split test --option image_size=28 --option rotations=true \
        --tasks 100 --reps-infer 200 --reps-adapt 20 --mem-reps 3 \
        --out benchmarks/results/device_report_structured_D_round \
        --note "Models of $RUN (dense 1000 iterations x 8 tasks; see structured_D_cpu.md, structured_D_cpu_mem45.md, structured_D_cpu_r8.md and structured_D_cpu_mem45_r4.md); 2-core CPU, one thread, run alone." \
        --note "accuracy here: 100 runtime tasks (support-statistics BatchNorm); the paired accuracy on 600 tasks is in the sparsity tables"
}
case "${1:-}" in
    r8|mem45r4|collect|device) "step_$1" ;;
    *) echo "usage: $0 r8|mem45r4|collect|device" >&2; exit 2 ;;
esac
