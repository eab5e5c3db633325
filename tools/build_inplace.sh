#!/usr/bin/env bash
# Developer build: compiles gradcore._C into ./gradcore so tests run from the source tree
# (PYTHONPATH=. pytest). Users install with `pip install .` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${GC_BUILD_DIR:-build/dev}
# The version compiled into _C (checked against gradcore.__version__ at import).
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGC_VERSION="$version" \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build_dir"
cmake --install "$build_dir" --prefix . >/dev/null
