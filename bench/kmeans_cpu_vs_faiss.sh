#!/usr/bin/env bash
# pkv's CPU k-means against faiss-cpu's k-means (faiss.Kmeans, PyPI faiss-cpu, pinned
# below), side by side in one run on the same data:
#   (a) real keys: one layer's post-RoPE keys of all KV heads from a pkv dump (d = 64)
#   (b) a synthetic Gaussian mixture at d = 128, n in {1e5, 1e6}
# for k in {16, 256, 1024}: same k, same fixed iteration count (no early stop), random
# distinct points as initial centroids, training on all points (subsampling disabled in
# both), the same thread count. Prints seconds per Lloyd iteration of each, their ratio,
# and both final objectives recomputed the same way (numpy, float64 sums) as the mean
# over several seeds. Details: bench/kmeans_cpu_vs_faiss.py.
#
# Installs faiss-cpu into data/venv on first use (pip, PyPI).
# Environment: PKV_BUILD_DIR (build/), PKV_DATA_DIR (data/), PKV_DUMP (a dump with
# k_post; default out/dump.h5 if present, else one is made here: 8192 tokens, one
# layer), PKV_BENCH_LAYER (stored layer slot to read, default: the middle one),
# PKV_BENCH_THREADS (2), PKV_BENCH_ITERS (25), PKV_BENCH_SEEDS (3; 10 for runs of at
# most 2e10 flops, PKV_BENCH_SEEDS_CHEAP), PKV_BENCH_K
# (16,256,1024), PKV_BENCH_N (100000,1000000), PKV_BENCH_JSON (per-run numbers),
# OMP_WAIT_POLICY (default: passive when the load average is at least the core count).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${PKV_BUILD_DIR:-$ROOT/build}"
DATA="${PKV_DATA_DIR:-$ROOT/data}"
VENV="$DATA/venv"
FAISS_VERSION="1.15.1"
THREADS="${PKV_BENCH_THREADS:-2}"
DRIVER="$BUILD/bench/pkv_bench_kmeans_cpu_file"
PKV="$BUILD/apps/pkv"
[ -x "$DRIVER" ] || { echo "kmeans_cpu_vs_faiss: $DRIVER missing: build pkv first" >&2; exit 1; }

if ! "$VENV/bin/python" -c "import faiss, sys; sys.exit(faiss.__version__ != '$FAISS_VERSION')" 2>/dev/null; then
  echo "kmeans_cpu_vs_faiss: installing faiss-cpu==$FAISS_VERSION into $VENV" >&2
  "$VENV/bin/pip" install --quiet "faiss-cpu==$FAISS_VERSION"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

DUMP="${PKV_DUMP:-$ROOT/out/dump.h5}"
if [ ! -f "$DUMP" ]; then
  [ -x "$PKV" ] || { echo "kmeans_cpu_vs_faiss: no dump at $DUMP and no $PKV to make one" >&2; exit 1; }
  echo "kmeans_cpu_vs_faiss: making a dump (8192 tokens, layer 15, k_post)" >&2
  DUMP="$WORK/dump.h5"
  "$PKV" --log-level warn dump --model "$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --text "$DATA/text/fortunes.txt" --tokens 8192 --ctx 1024 --layers 15 --capture k_post \
    --out "$DUMP" >/dev/null
fi
# h5py comes from Debian's python3-h5py, so the system interpreter reads the dump.
keys_label=$(/usr/bin/python3 - "$DUMP" "$WORK/keys.f32" "${PKV_BENCH_LAYER:-}" <<'PY'
import sys, h5py, numpy as np
path, out, slot = sys.argv[1], sys.argv[2], sys.argv[3]
with h5py.File(path, "r") as f:
    k = f["k_post"]
    l = int(slot) if slot else k.shape[0] // 2
    x = np.asarray(k[l], dtype=np.float32).reshape(-1, k.shape[3])
    layer = int(f["layers"][l])
assert x.shape[1] == 64, f"{path}::/k_post: expected head dim 64, got {x.shape[1]}"
np.ascontiguousarray(x).tofile(out)
print(f"keys L{layer} all heads")
PY
)

# Both libraries run on libgomp. When the machine is already oversubscribed, its
# default spin-waiting at barriers makes a thread burn the time slice its descheduled
# partner needs (figures in docs/kmeans_gpu.md), so both then get OMP_WAIT_POLICY=passive.
if [ -z "${OMP_WAIT_POLICY:-}" ] && awk -v c="$(nproc)" '{ exit !($1 >= c) }' /proc/loadavg; then
  export OMP_WAIT_POLICY=passive
fi
echo "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default}"
OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" "$VENV/bin/python" - <<PY
import os, platform, numpy, faiss
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} cores, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
print(f"faiss-cpu {faiss.__version__} ({faiss.get_compile_options().strip()}), numpy {numpy.__version__}, "
      f"python {platform.python_version()}, $("$PKV" --version 2>/dev/null || echo "pkv ?"), threads $THREADS each")
PY
echo "dump: $DUMP ($keys_label); ${PKV_BENCH_ITERS:-25} Lloyd iterations, ${PKV_BENCH_SEEDS:-3} seeds" \
  "(${PKV_BENCH_SEEDS_CHEAP:-10} for runs of <= 2e10 flops), no subsampling, random init"

OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" "$VENV/bin/python" "$ROOT/bench/kmeans_cpu_vs_faiss.py" \
  --driver "$DRIVER" --work "$WORK" --keys "$WORK/keys.f32" --keys-label "$keys_label" \
  --iters "${PKV_BENCH_ITERS:-25}" --seeds "${PKV_BENCH_SEEDS:-3}" --seeds-cheap "${PKV_BENCH_SEEDS_CHEAP:-10}" \
  --threads "$THREADS" \
  --k "${PKV_BENCH_K:-16,256,1024}" --synthetic-n "${PKV_BENCH_N:-100000,1000000}" \
  ${PKV_BENCH_JSON:+--json "$PKV_BENCH_JSON"}
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
