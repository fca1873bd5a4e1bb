#!/usr/bin/env bash
# Compiles every source that takes an absl::Mutex (or whose header declares
# one) with clang's thread-safety analysis as errors, using the include paths
# and defines CMake recorded in compile_commands.json. GCC, which builds the
# project, ignores ABSL_GUARDED_BY and friends; this is what checks them.
#
# Usage: tests/thread_safety/check.sh BUILD_DIR
# Exit 0 clean, 1 on a violation (clang's diagnostics on stderr), 77 (skip)
# when clang++-14 or compile_commands.json is missing.
set -euo pipefail
build=${1:?usage: check.sh BUILD_DIR}
clang=$(command -v clang++-14 || true)
if [ -z "$clang" ]; then
  echo "thread-safety check: clang++-14 not installed (scripts/packages.txt [test])" >&2
  exit 77
fi
if [ ! -f "$build/compile_commands.json" ]; then
  echo "thread-safety check: $build/compile_commands.json missing (CMAKE_EXPORT_COMPILE_COMMANDS)" >&2
  exit 77
fi
jobs=${WG_THREAD_SAFETY_JOBS:-2}

# One line per source: "<dir>\t<file>\t<flags...>", only -I/-isystem/-D/-std
# flags (the rest are GCC's: warnings, optimisation, the launcher).
/usr/bin/python3 - "$build/compile_commands.json" >"$build/thread_safety_units.txt" <<'PY'
import json, os, re, shlex, sys

MUTEX = re.compile(r"absl::Mutex\b|ABSL_GUARDED_BY|ABSL_EXCLUSIVE_LOCKS_REQUIRED")

def uses_mutex(path):
    for p in (path, os.path.splitext(path)[0] + ".h"):
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                if MUTEX.search(f.read()):
                    return True
        except OSError:
            pass
    return False

seen = set()
for entry in json.load(open(sys.argv[1])):
    src = os.path.normpath(os.path.join(entry["directory"], entry["file"]))
    if src in seen:
        continue
    seen.add(src)
    if not uses_mutex(src):
        continue
    args = entry.get("arguments") or shlex.split(entry["command"])
    keep, i = [], 0
    while i < len(args):
        a = args[i]
        if a in ("-I", "-isystem", "-D", "-include"):
            keep += [a, args[i + 1]]
            i += 2
            continue
        if a.startswith(("-I", "-D", "-std=", "-isystem")):
            keep.append(a)
        i += 1
    print("\t".join([entry["directory"], src] + keep))
PY

count=$(wc -l <"$build/thread_safety_units.txt")
if [ "$count" -eq 0 ]; then
  echo "thread-safety check: no source uses absl::Mutex?" >&2
  exit 1
fi
check_one() {
  IFS=$'\t' read -r -a fields <<<"$1"
  cd "${fields[0]}"
  "$clang" -fsyntax-only -Wthread-safety -Werror=thread-safety "${fields[@]:2}" "${fields[1]}" ||
    { echo "thread-safety check FAILED: ${fields[1]}" >&2; return 1; }
  echo "thread-safety check ok: ${fields[1]#"$WG_ROOT/"}"
}
export -f check_one
export clang WG_ROOT="${WG_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
tr '\n' '\0' <"$build/thread_safety_units.txt" |
  xargs -0 -P "$jobs" -I{} bash -c 'check_one "$1"' _ {} || exit 1
