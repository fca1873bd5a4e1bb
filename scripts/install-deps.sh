#!/usr/bin/env bash
# Installs the Debian packages weightgate needs that are not installed yet.
# Usage: scripts/install-deps.sh [build] [test] [fuzz]   (default: build test)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(build test)

want=()
for section in "${sections[@]}"; do
  while read -r pkg; do want+=("$pkg"); done < <(
    awk -v s="[$section]" '/^\[/{on=($0==s); next} on && NF && $1 !~ /^#/ {print $1}' "$here/packages.txt")
done

missing=()
for pkg in "${want[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
