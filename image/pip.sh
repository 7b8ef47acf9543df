#!/bin/sh
# `pip install|wheel ARGS` inside the image build: from the wheelhouse alone when it holds wheels (an
# offline build: nothing is fetched), otherwise from the package index. TORCH_INDEX, when set, is the
# index torch comes from (the CPU build lives on PyTorch's own index, not on PyPI).
set -eu
command=$1
shift
if ls /wheels/*.whl >/dev/null 2>&1; then
    exec /opt/venv/bin/pip "$command" --no-index --find-links /wheels "$@"
elif [ -n "${TORCH_INDEX:-}" ]; then
    exec /opt/venv/bin/pip "$command" --extra-index-url "$TORCH_INDEX" "$@"
else
    exec /opt/venv/bin/pip "$command" "$@"
fi
