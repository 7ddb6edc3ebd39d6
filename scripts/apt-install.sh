#!/usr/bin/env bash
# Install Debian packages that are missing, non-interactively; does nothing when all are there.
# Usage: scripts/apt-install.sh WHAT [--no-install-recommends] PACKAGE...   (WHAT names them in messages)
# Uses sudo unless run as root (sudo -n without a terminal: fails instead of hanging).
set -euo pipefail

what=$1
shift
options=()
if [ "${1:-}" = "--no-install-recommends" ]; then
  options+=("$1")
  shift
fi

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "needs a Debian-based system with apt-get; install the $what by hand: $*" >&2
  exit 1
fi

missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$what already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root or install sudo (the $what needs: ${missing[*]})" >&2; exit 1; }
  sudo=(sudo)
  [ -t 0 ] || sudo+=(-n)
fi
echo "installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${options[@]}" "${missing[@]}"
