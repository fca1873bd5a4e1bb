#!/usr/bin/env bash
# Fails when a tracked C++ file differs from clang-format's output (.clang-format at the root).
# Usage: scripts/lint.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
fmt=$(command -v clang-format-14 || command -v clang-format)
mapfile -t files < <(git ls-files '*.cc' '*.c' '*.h')
if [ "${1:-}" = "--fix" ]; then
  "$fmt" --style=file -i "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! "$fmt" --style=file "$f" | cmp -s - "$f"; then
    echo "lint: $f is not clang-formatted (scripts/lint.sh --fix)" >&2
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "lint: ${#files[@]} files clang-formatted"
exit "$bad"
