#!/usr/bin/env bash
# Step the engine files aside before a lent-GPU call, and back after it.
#
# The device tool sends the working tree (tracked and untracked files) plus what `carry` names,
# 64 MiB in all; engines/ holds ~230 MB of shipped models. `out` moves every engine binary but
# KEEP (space-separated; default the --init weights of tools/gpu_train.sh) to STASH and prints what would travel; `back`
# returns them. If a session ends between the two, `git checkout -- engines` restores them.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${STASH:-/tmp/hemoseg-engines-stash}
KEEP=${KEEP:-engines/hemoseg_mnv2_v7.weights.h5}
case "${1:-}" in
out)
    mkdir -p "$STASH"
    for f in engines/*.onnx engines/*.h5; do
        case " $KEEP " in *" $f "*) ;; *) mv "$f" "$STASH/" ;; esac
    done
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) |
        xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1) || true  # moved files: du fails
    echo "the working tree now: $((tree / 1048576)) MiB; with what a call carries, 64 MiB at most:"
    du -sm .gpu/* 2>/dev/null || echo "  no .gpu/ (make gpu-pack)"
    ;;
back)
    [ -d "$STASH" ] && mv "$STASH"/* engines/ 2>/dev/null || true
    git status --short engines
    ;;
*)
    echo "usage: tools/gpu_stage.sh out|back" >&2
    exit 2
    ;;
esac
