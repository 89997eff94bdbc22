#!/usr/bin/env bash
# import-linter over the `sphinxx` namespace. The namespace is assembled from several
# top-level folders by pyproject's package-dir mapping, which grimp cannot follow (it
# walks one package directory). So the folders are copied into one tree under
# build/lint and the contracts in pyproject.toml are checked there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tree="$root/build/lint"
rm -rf "$tree" && mkdir -p "$tree/sphinxx"
cp "$root"/sphinxx/*.py "$tree/sphinxx/"
for d in model jobs operator storage; do
  (cd "$root" && find "$d" -name '*.py' -not -path '*/__pycache__/*' -exec cp --parents {} "$tree/sphinxx/" \;)
done
cd "$tree"
PYTHONPATH="$tree" "$root/.venv/bin/lint-imports" "$root/pyproject.toml" --no-cache
