#!/usr/bin/env bash
# Rehearse `make gpu-check` on a CPU machine with PyPI, in an environment shaped like the lent GPU machine's (README,
# "GPU"): Python 3.12 with nothing but torch 2.11 and transformers 5 (and pytest, which --smoke's tiny model config
# imports from the tests), the staged wheels installed the way README says, then bench/gpu_check.py --smoke.
# A wheel the GPU run would lack, or an API that torch 2.11 or transformers 5 changed, shows up here, before any
# device time is spent. Exit status 1 when a part errs or is skipped for a missing package.
#   PYTHON312=~/.pyenv/versions/3.12.1/bin/python bench/gpu_rehearse.sh   (first run: ~5 GB of torch, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON312="${PYTHON312:-python3.12}"
DIR="${GPU_REHEARSAL_DIR:-$HOME/.cache/perceiver-stream/gpu-rehearsal}"
[[ -d .whl && -d .gpu ]] || { echo "gpu_rehearse.sh: stage .whl and .gpu first: bench/gpu_wheels.sh" >&2; exit 2; }

if [[ ! -x "$DIR/venv/bin/python" ]]; then
  "$PYTHON312" -m venv "$DIR/venv"
  "$DIR/venv/bin/python" -m pip install -q torch==2.11.0 'transformers>=5,<6' pytest
fi
rm -rf "$DIR/site"
"$DIR/venv/bin/python" bench/gpu_site.py --wheels .whl --target "$DIR/site"

out="$DIR/gpu_check_smoke.json"
HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONPATH="$DIR/site" "$DIR/venv/bin/python" bench/gpu_check.py --smoke \
  --steps 2 --out "$out" | tail -1
"$DIR/venv/bin/python" - "$out" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
versions = f"torch {result['torch']}"
problems = [f"{part}: {entry}" for part in ("model", "compile", "lamb", "train") for entry in [result[part]]
            if "error" in entry or "skipped" in entry or "error" in json.dumps(entry)]
if problems:
    print("gpu_rehearse.sh: " + "; ".join(problems)[:2000], file=sys.stderr)
    sys.exit(1)
print(f"gpu_rehearse.sh: every part of gpu_check.py --smoke ran under {versions} with the staged wheels")
EOF
