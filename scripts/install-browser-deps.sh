#!/usr/bin/env bash
# Install the headless browser of the console's browser tests (tests/e2e/test_console_browser.py)
# from Debian packages: chromium and the matching chromedriver (/usr/bin/chromium,
# /usr/bin/chromedriver). No browser is downloaded at test time. Does nothing when they are
# installed. Non-interactive; uses sudo unless run as root.
set -euo pipefail

PACKAGES=(chromium chromium-driver)

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "install-browser-deps.sh: needs a Debian-based system with apt-get; install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "chromium and chromium-driver already installed"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser-deps.sh: run as root or install sudo (needs: ${missing[*]})" >&2; exit 1; }
  sudo=(sudo)
  [ -t 0 ] || sudo+=(-n) # no terminal to ask a password on: fail instead of hanging
fi
echo "installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
