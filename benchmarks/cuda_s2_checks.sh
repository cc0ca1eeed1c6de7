#!/usr/bin/env bash
# The CUDA checks of the S2 kernels are now steps of benchmarks/gpu_check.sh (its "tests" and "attention"
# steps: the CUDA tests against the slow reference, then forward+backward timings of plain and packed rows).
# This keeps the old command working:
#   bash benchmarks/cuda_s2_checks.sh [OUT]      (OUT: results/gpu-check)
exec bash "$(dirname "$0")/gpu_check.sh" --device cuda --only tests,attention "${1:-results/gpu-check}"
