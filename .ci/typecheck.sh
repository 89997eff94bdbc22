#!/usr/bin/env bash
# mypy over the `sphinxx` packages that must type-check (pyproject's [tool.mypy] `packages`).
# mypy cannot follow the editable install's import hook, so it runs on the namespace tree
# that .ci/namespace_tree.sh assembles under build/typecheck; its messages are mapped back
# to the real files (sphinxx/storage/x.py -> storage/x.py), relative to the repo root.
#   usage: bash .ci/typecheck.sh                  # the gated packages (part of `make lint`)
#          bash .ci/typecheck.sh -p sphinxx.sweep   # any other package, same config
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$root/build/typecheck"
bash "$root/.ci/namespace_tree.sh" "$tree"
cd "$tree"
# The cache lives outside the tree (rebuilt each run); unchanged files are recognised by hash.
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/build/mypy-cache" "$@" 2>&1 \
  | sed -E 's#^sphinxx/(model|jobs|operator|storage)/#\1/#'
