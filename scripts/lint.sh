#!/usr/bin/env bash
# Lint: ruff over the tree, then mypy --strict over the package (config in pyproject.toml).
#   bash scripts/lint.sh        (what `make lint` and `make test` call)
# pyproject maps engines/, pipelines/, ... onto inferline.*, which mypy cannot follow,
# so it checks a tree of symlinks laid out as installed (build/ is ignored by git).
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
.venv/bin/ruff check . || status=1

tree=build/typecheck  # kept between runs for mypy's cache
rm -rf "$tree/inferline"
mkdir -p "$tree/inferline"
for path in inferline/*; do
    [ "$(basename "$path")" = __pycache__ ] || ln -s "$PWD/$path" "$tree/$path"
done
for sub in engines pipelines containers settings server; do
    ln -s "$PWD/$sub" "$tree/inferline/$sub"
done
(cd "$tree" && ../../.venv/bin/mypy --config-file ../../pyproject.toml -p inferline) || status=1
exit $status
