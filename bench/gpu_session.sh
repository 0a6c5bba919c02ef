#!/usr/bin/env bash
# Everything we run on a lent GPU machine, in one call: build resid_ext in place for that GPU,
# the CUDA parity tests (tests/cuda), the whole suite with the GPU visible, and the GPU
# benchmarks. Each stage writes its log under $OUT (or /tmp/resid-gpu); stages are picked by
# the arguments, in order:
#
#     bash bench/gpu_session.sh build tests kmeans    # default: all stages, in this order:
#     build tests suite beam decode kmeans auction
#
# Stage time limits keep one stage from eating the whole call. Exit status: 1 when a stage
# failed (the later stages still run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/resid-gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/python:$PWD" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
status=0

stage() {  # stage NAME SECONDS CMD...: run CMD with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc $rc, $((SECONDS - t0)) s"
    tail -n "${TAIL:-15}" "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
}

[ $# -gt 0 ] || set -- build tests suite beam decode kmeans auction
for s in "$@"; do
    case "$s" in
    build)
        # The lent machines' image sets CXX=/opt/gcc/bin/g++ (a partial toolchain: its own g++,
        # cc1, as) and puts it first on PATH; a module it builds crashes (SIGSEGV) whenever C++
        # raises an error, e.g. the Trie's duplicate-row ValueError. The distribution's g++
        # builds a working one (session 6), so it replaces an unset or /opt/gcc compiler.
        case "${CXX:-}" in "" | /opt/gcc/*) [ -x /usr/bin/g++ ] && export CXX=/usr/bin/g++ ;; esac
        case "${CUDAHOSTCXX:-}" in "" | /opt/gcc/*) [ -n "${CXX:-}" ] && export CUDAHOSTCXX="$CXX" ;; esac
        echo "CXX=${CXX:-default} CUDAHOSTCXX=${CUDAHOSTCXX:-default}"
        # CMake keeps the compiler an existing build folder was configured with: start that
        # folder afresh when it was another one (a warm machine keeps ignored build outputs).
        for cache in build/temp.*/cmake-*/CMakeCache.txt; do
            if [ -f "$cache" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=${CXX:-}" "$cache"; then
                rm -rf "$(dirname "$cache")"
            fi
        done
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
        stage build 600 env RESID_CUDA=1 RESID_WERROR=1 RESID_CUDA_ARCHS="${RESID_CUDA_ARCHS:-90}" \
            "$PY" setup.py -q build_ext --inplace
        "$PY" -c "import resid_ext; print(resid_ext.build_info())"
        ;;
    tests) stage tests_cuda 300 "$PY" -m pytest -q -rA -p no:cacheprovider tests/cuda ;;
    suite) stage suite 600 "$PY" -m pytest -q -p no:cacheprovider tests ;;
    beam) stage bench_beam 200 "$PY" bench/bench_beam.py --device cuda --items 20000 1000000 --batch 32 256 ;;
    decode) stage bench_decode 200 "$PY" bench/decode.py --device cuda --items 20000 --batches 32,256 --users 1024 ;;
    kmeans) stage bench_kmeans 300 "$PY" bench/kmeans.py --device cuda --config 100000,128,256,20 --config 1000000,128,256,20 ;;
    auction) stage bench_auction 300 "$PY" bench/auction_device.py ;;
    *) echo "gpu_session.sh: unknown stage '$s' (build tests suite beam decode kmeans auction)" >&2; exit 2 ;;
    esac
done
exit $status
