#!/usr/bin/env bash
# Install the headless browser of the console's browser tests (tests/e2e/test_console_browser.py)
# from Debian packages: chromium and the matching chromedriver (/usr/bin/chromium,
# /usr/bin/chromedriver). No browser is downloaded at test time. Does nothing when they are
# installed. Non-interactive; uses sudo unless run as root (scripts/apt-install.sh).
set -euo pipefail

PACKAGES=(chromium chromium-driver)

exec "$(dirname "$0")/apt-install.sh" "headless browser" --no-install-recommends "${PACKAGES[@]}"
