#!/usr/bin/env bash
# The wheels a lent GPU machine lacks, fetched here once (it reaches no network): its image has torch
# 2.11 (CUDA 13), torchvision 0.26 (nvJPEG), OpenCV, Pillow, PyYAML and tqdm, but not Optuna and the
# transformers these figures were taken with. Writes .whl/ (git-ignored through .git/info/exclude);
# carry it and install it first there:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
rm -rf .whl
"$PIP" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl optuna==5.0.0 alembic colorlog sqlalchemy mako greenlet transformers==5.24.0
du -sh .whl
