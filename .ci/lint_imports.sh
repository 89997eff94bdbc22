#!/usr/bin/env bash
# import-linter over the `sphinxx` namespace. The namespace is assembled from several
# top-level folders by pyproject's package-dir mapping, which grimp cannot follow (it
# walks one package directory). So the folders are copied into one tree under
# build/lint (.ci/namespace_tree.sh) and the contracts in pyproject.toml are checked there.
#   usage: bash .ci/lint_imports.sh     (part of `make lint`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$root/build/lint"
bash "$root/.ci/namespace_tree.sh" "$tree"
cd "$tree"
PYTHONPATH="$tree" "$root/.venv/bin/lint-imports" "$root/pyproject.toml" --no-cache
