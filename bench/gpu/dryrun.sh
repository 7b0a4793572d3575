#!/usr/bin/env bash
# Dry-runs the GPU device check on a machine without a GPU, to find mistakes in the
# script before spending device time: the tests' fake NVML library
# (PADDOCK_NVML_LIBRARY), a stand-in nvidia-smi and a stand-in torch all read and
# write one fake driver state. It shows that check.py drives paddock as intended;
# it measures nothing about a GPU.
#   bash bench/gpu/dryrun.sh    # uses target/debug/paddock unless $PADDOCK is set
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
export PADDOCK=${PADDOCK:-$ROOT/target/debug/paddock}
[ -x "$PADDOCK" ] || { echo "no $PADDOCK: cargo build first"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export FAKE_NVML_DIR=$TMP/nvml
mkdir -p "$FAKE_NVML_DIR" "$TMP/bin"
echo "Fake H200|150000000000" > "$FAKE_NVML_DIR/devices"
cc -shared -fPIC -O1 -o "$FAKE_NVML_DIR/libnvidia-ml.so.1" "-DFAKE_NVML_DIR=\"$FAKE_NVML_DIR\"" \
  crates/paddock/tests/fixtures/fake_nvml.c
export PADDOCK_NVML_LIBRARY=$FAKE_NVML_DIR/libnvidia-ml.so.1
cp bench/gpu/dryrun/nvidia-smi "$TMP/bin/"
# A python whose torch is the stand-in, for the check and its workers alike.
printf '#!/bin/sh\nPYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH} exec python3 "$@"\n' "$ROOT/bench/gpu/dryrun" > "$TMP/bin/python-fake-torch"
chmod +x "$TMP/bin/python-fake-torch"
PATH=$TMP/bin:$PATH OUT=${OUT:-/tmp} PYTHON=$TMP/bin/python-fake-torch bash bench/gpu/check.sh
