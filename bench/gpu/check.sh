#!/usr/bin/env bash
# The GPU device check (issue 17), for a machine with an NVIDIA GPU and PyTorch,
# with a paddock binary built elsewhere and carried over (target/release/paddock).
#   bash bench/gpu/check.sh            # writes its report to stdout and $OUT/gpu-check.txt
# It measures: 4 PyTorch workers on one GPU answering requests; each worker's GPU
# memory in `paddock status`; a handler that leaks GPU memory recycled by
# max_gpu_memory; the daemon SIGKILLed -> no process of the instance holds GPU memory
# within 2 s; and beside it the naive pattern (CUDA initialised, then os.fork())
# failing with PyTorch's own error.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
P=${PADDOCK:-$ROOT/target/release/paddock}
OUTFILE=${OUT:-/tmp}/gpu-check.txt
exec > >(tee "$OUTFILE") 2>&1
PY=${PYTHON:-python3}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
$PY -c 'import torch; assert torch.cuda.is_available()' || { echo "PyTorch with CUDA is needed ($PY)"; exit 1; }
nvidia-smi -L
echo "paddock: $($P --version)"

DIR=$(mktemp -d)
export XDG_STATE_HOME=$DIR/state
cat > "$DIR/paddock.toml" <<TOML
[instance]
name = "gpucheck"
listen = "127.0.0.1:18790"

[services.mlp]
command = ["$PY", "$ROOT/bench/gpu/torch_worker.py"]
devices = [0]
workers_per_device = 4
max_gpu_memory = "2GiB"
startup_timeout = "120s"
request_timeout = "30s"
env = { PYTHONPATH = "$ROOT/sdk/python" }
TOML
$P -c "$DIR/paddock.toml" start
echo "--- 400 requests over 4 workers"
secs() { $PY -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }
t0=$(date +%s.%N)
for i in $(seq 1 400); do
  curl -sf localhost:18790/v1/mlp -H 'Content-Type: application/json' -d '{"n": 64}' >/dev/null
done
t1=$(date +%s.%N)
echo "400 requests in $(secs "$t0" "$t1") s"
echo "--- status: each worker's device and GPU memory"
$P -c "$DIR/paddock.toml" status
$P -c "$DIR/paddock.toml" status --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
print("gpus:", s["instance"]["gpus"])
for w in s["services"][0]["workers"]:
    print(f"worker {w[\"index\"]}: device {w[\"device\"]}, gpu_memory {w[\"gpu_memory_bytes\"]} bytes")
'
echo "--- a leaking handler: worker recycled by max_gpu_memory (2 GiB)"
gen_before=$($P -c "$DIR/paddock.toml" status --json | $PY -c 'import json,sys; print(sum(w["generation"] for w in json.load(sys.stdin)["services"][0]["workers"]))')
for i in $(seq 1 12); do
  curl -s localhost:18790/v1/mlp/leak -H 'Content-Type: application/json' -d '{"mb": 512}'; echo
done
for i in $(seq 1 60); do
  gen=$($P -c "$DIR/paddock.toml" status --json | $PY -c 'import json,sys; print(sum(w["generation"] for w in json.load(sys.stdin)["services"][0]["workers"]))')
  [ "$gen" -gt "$gen_before" ] && break
  sleep 0.5   # a check script polling a live system, not a test
done
echo "generations: $gen_before -> $gen"
grep -h "max_gpu_memory" "$XDG_STATE_HOME"/paddock/gpucheck-18790/logs/*.log "$XDG_STATE_HOME"/paddock/gpucheck-18790/daemon.log 2>/dev/null | tail -3 || true
echo "--- daemon SIGKILL: GPU memory of the instance's processes back to none"
PIDS=$($P -c "$DIR/paddock.toml" status --json | $PY -c 'import json,sys; print(" ".join(str(w["pid"]) for w in json.load(sys.stdin)["services"][0]["workers"]))')
DAEMON=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$XDG_STATE_HOME"/paddock/gpucheck-18790/lock)
nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader
t0=$(date +%s.%N)
kill -9 "$DAEMON"
while :; do
  left=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | tr -d ' ' | grep -xF -f <(tr ' ' '\n' <<<"$PIDS") || true)
  [ -z "$left" ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
echo "no worker holds GPU memory $(secs "$t0" "$t1") s after the daemon's SIGKILL"
echo "--- the naive pattern: CUDA initialised, then os.fork()"
$PY "$ROOT/bench/gpu/naive_fork.py" || true
rm -rf "$DIR"
