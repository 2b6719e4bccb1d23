#!/usr/bin/env bash
# The runtime packages that the lent GPU machines' image lacks, as wheels in .whl/ for the device
# tool's `carry` (/work/.library/device/README.md and KINDS.md: the image holds jax, flax, optax,
# orbax-checkpoint, transformers, tokenizers, safetensors, absl-py, tqdm, numpy, jinja2,
# matplotlib and pytest, but not ml-collections or tensorboardX). Both are pure Python, with
# needs (PyYAML, protobuf, packaging) the image has. On the device, a call starts with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl || exit 1; export PYTHONPATH=/tmp/site:$PWD
# Run from anywhere: bash bench/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
  "ml-collections==1.1.0" "tensorboardX==2.6.5"
ls .whl
