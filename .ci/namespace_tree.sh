#!/usr/bin/env bash
# Assemble the `sphinxx` namespace into one ordinary package tree: DEST/sphinxx/{schema,sweep,model,storage,jobs,operator,...}.
# pyproject's package-dir mapping spreads the namespace over several top-level folders,
# which static tools (import-linter's grimp, mypy) cannot follow through the editable
# install's import hook, so they run on this copy instead. Python files only.
#   usage: bash .ci/namespace_tree.sh DEST     (DEST is emptied first; e.g. build/lint)
# Used by .ci/lint_imports.sh and .ci/typecheck.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:?usage: namespace_tree.sh DEST}"
rm -rf "$dest" && mkdir -p "$dest"
(cd "$root" && find sphinxx -name '*.py' -not -path '*/__pycache__/*' -exec cp --parents -t "$dest/" {} +)
for d in model jobs operator storage; do
  (cd "$root" && find "$d" -name '*.py' -not -path '*/__pycache__/*' -exec cp --parents -t "$dest/sphinxx/" {} +)
done
