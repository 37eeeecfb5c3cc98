#!/usr/bin/env bash
# Stage what gpu/gpu_check.py needs on a GPU machine that reaches no package registry (gpu/README.md):
#   .whl/  this project's wheel, and the wheels for Python 3.12 that the machine's image lacks (Composer, streaming
#          and what they import eagerly) at the versions this project pins, with a check that they fit the 64 MiB
#          a device run may carry;
#   .gpu/  the xlnet-base-cased tokenizer and a few Wikipedia extracts from ../shared, for the train part.
# Both folders are ignored by git. `gpu/gpu_wheels.sh --list` prints the third-party wheel list and exits.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  mosaicml==0.32.1 mosaicml-streaming==0.13.0 omegaconf==2.4.0 torch-optimizer==0.3.0 pytorch-ranger==0.1.1
  mwparserfromhell==0.7.2
  # imported when composer or streaming is imported
  coolname==2.2.0 importlib-metadata==8.9.0 mosaicml-cli==0.7.5 argcomplete==3.7.2 arrow==1.4.0 tzdata==2026.6
  backoff==2.2.1 gql==3.5.3 graphql-core==3.2.6 prompt_toolkit==3.0.36 wcwidth==0.9.4 questionary==2.0.1
  ruamel.yaml==0.19.1 validators==0.36.0 termcolor==3.3.0 zstd==1.5.6.1 python-snappy==0.7.3 cramjam==2.14.0
  Brotli==1.2.1 catalogue==2.0.10
  # what a Python with only torch and transformers 5 lacks (bench/gpu_rehearse.sh found them): composer imports
  # requests, torchvision (built for torch 2.11), torchmetrics, psutil, py-cpuinfo; train.py logs to TensorBoard,
  # and Composer's console logger needs pandas for the fill-mask table
  requests==2.34.2 urllib3==2.8.0 charset_normalizer==3.5.3 certifi==2026.10.19.post1 torchvision==0.26.0
  pillow==13.0.0 py-cpuinfo==9.0.0 psutil==7.2.2 torchmetrics==1.9.0 lightning-utilities==0.15.3 websockets==17.4
  python-dateutil==4.0.0 xxhash==4.1.0 tensorboard==2.21.0 protobuf==7.36.2 absl-py==2.5.1 pandas==3.1.1
)
LIMIT_MIB=64
PYTHON="${PYTHON:-python3}"
PROJECT_PYTHON="${PROJECT_PYTHON:-${VENV:-.venv}/bin/python}"  # has setuptools, so the wheel builds offline

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${WHEELS[@]}"
  exit 0
fi

rm -rf .whl && mkdir -p .whl
platforms=()
for n in 39 35 34 31 28 27 24 17 5; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
"$PROJECT_PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl .

shared=../shared
if [[ -d "$shared/tokenizers/xlnet-base-cased" ]]; then
  rm -rf .gpu && mkdir -p .gpu/corpus
  cp -r "$shared/tokenizers/xlnet-base-cased" .gpu/
  cp "$shared"/corpora/wikipedia/enwiki2015_wiki_0[0-2] .gpu/corpus/
else
  echo "gpu_wheels.sh: $shared is absent; pass --corpus and --tokenizer to gpu/gpu_check.py yourself" >&2
fi

mib=$(du -sm .whl | cut -f1)
total=$(du -smc .whl .gpu 2>/dev/null | tail -1 | cut -f1)
echo "gpu_wheels.sh: perceiver-stream and ${#WHEELS[@]} wheels, ${mib} MiB in .whl; with .gpu ${total} MiB (limit ${LIMIT_MIB} MiB)"
if (( total > LIMIT_MIB )); then
  echo "gpu_wheels.sh: ${total} MiB is over the ${LIMIT_MIB} MiB a device run may carry" >&2
  exit 1
fi
