#!/usr/bin/env bash
# Rehearse `make gpu-check` on a CPU machine with PyPI, in an environment shaped like the lent GPU machine's
# (gpu/README.md): Python 3.12 with nothing but torch 2.11 and transformers 5, the staged wheels (this project's
# among them) installed the way gpu/README.md says, then gpu/gpu_check.py --smoke.
# A wheel the GPU run would lack, or an API that torch 2.11 or transformers 5 changed, shows up here, before any
# device time is spent. Then a checkpoint between the two stacks: mlm_tiny trained 6 batches with this project's venv
# (torch 2.7, transformers 4.57), resumed for 2 more in each stack, and exported in each: the weights must agree to
# float rounding and the exported models' logits exactly. Exit status 1 when any of it fails.
#   PYTHON312=~/.pyenv/versions/3.12.1/bin/python gpu/gpu_rehearse.sh   (first run: ~5 GB of torch, a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON312="${PYTHON312:-python3.12}"
DIR="${GPU_REHEARSAL_DIR:-$HOME/.cache/perceiver-stream/gpu-rehearsal}"
[[ -d .whl && -d .gpu ]] || { echo "gpu_rehearse.sh: stage .whl and .gpu first: gpu/gpu_wheels.sh" >&2; exit 2; }

if [[ ! -x "$DIR/venv/bin/python" ]]; then
  "$PYTHON312" -m venv "$DIR/venv"
  "$DIR/venv/bin/python" -m pip install -q torch==2.11.0 'transformers>=5,<6'
fi
rm -rf "$DIR/site"
"$DIR/venv/bin/python" gpu/gpu_site.py --wheels .whl --target "$DIR/site"

out="$DIR/gpu_check_smoke.json"
HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONPATH="$DIR/site" "$DIR/venv/bin/python" gpu/gpu_check.py --smoke \
  --steps 2 --out "$out" | tail -1
"$DIR/venv/bin/python" - "$out" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
versions = f"torch {result['torch']}"
problems = [f"{part}: {entry}" for part in ("model", "compile", "lamb", "train") for entry in [result[part]]
            if "skipped" in entry or "error" in json.dumps(entry)]
if problems:
    print("gpu_rehearse.sh: " + "; ".join(problems)[:2000], file=sys.stderr)
    sys.exit(1)
print(f"gpu_rehearse.sh: every part of gpu_check.py --smoke ran under {versions} with the staged wheels")
EOF

PROJECT_PYTHON="$(realpath -s "${PROJECT_PYTHON:-${VENV:-.venv}/bin/python}")"  # -s: a venv's python is a link
work="$DIR/checkpoint"
rm -rf "$work" && mkdir -p "$work"
tokenizer="$(realpath .gpu/xlnet-base-cased)"
corpus="$(realpath "$(ls .gpu/corpus/* | head -1)")"
cd "$work"  # each stack imports its own perceiver_stream, not the checkout's files
export HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1
"$PROJECT_PYTHON" -m perceiver_stream.convert.cli text --input "$corpus" --tokenizer "$tokenizer" --max-seq-len 128 \
  --out shards > /dev/null
train() {  # train PYTHON PYTHONPATH FOLDER BATCHES
  PYTHONPATH="$2" "$1" -m perceiver_stream.train.cli mlm_tiny data.streams.wikipedia.local=shards \
    data.streams.bookcorpus=null "data.tokenizer=$tokenizer" "max_duration=$4ba" "save_folder=$3" \
    save_interval=2ba "loggers.tensorboard.log_dir=$3-tb" progress_bar=false autoresume=true > "$3.log" 2>&1 \
    || { tail -5 "$3.log" >&2; exit 1; }
}
train "$PROJECT_PYTHON" "" here 6
cp -r here there
train "$PROJECT_PYTHON" "" here 8
train "$DIR/venv/bin/python" "$DIR/site" there 8
"$PROJECT_PYTHON" -m perceiver_stream.export here/ep0-ba8-rank0.pt --out hf-here > /dev/null 2>&1
PYTHONPATH="$DIR/site" "$DIR/venv/bin/python" -m perceiver_stream.export here/ep0-ba8-rank0.pt --out hf-there \
  > /dev/null 2>&1
logits='import sys, torch; from transformers import PerceiverForMaskedLM as M
ids = torch.arange(5, 133).reshape(1, 128) * 7 % 32000
torch.save(M.from_pretrained(sys.argv[1]).eval()(input_ids=ids).logits.detach(), sys.argv[2])'
"$PROJECT_PYTHON" -c "$logits" hf-here logits-here.pt 2> /dev/null
PYTHONPATH="$DIR/site" "$DIR/venv/bin/python" -c "$logits" hf-there logits-there.pt 2> /dev/null
"$PROJECT_PYTHON" - "$work" <<'PY'
import sys
from pathlib import Path

import torch

from perceiver_stream.checkpoint import model_weights, read_checkpoint

work = Path(sys.argv[1])
start, here, there = (model_weights(read_checkpoint(work / name)) for name in
                      ("here/ep0-ba6-rank0.pt", "here/ep0-ba8-rank0.pt", "there/ep0-ba8-rank0.pt"))


def distance(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).double().square().sum()) for k in a) ** 0.5


apart = distance(here, there) / distance(here, start)
same_logits = torch.equal(torch.load(work / "logits-here.pt"), torch.load(work / "logits-there.pt"))
print(f"gpu_rehearse.sh: a torch 2.7 checkpoint resumed under each stack: 2 batches later the weights are "
      f"{apart:.1e} of the distance they moved apart; exported under each, logits equal: {same_logits}")
sys.exit(0 if apart < 1e-4 and same_logits else 1)
PY
