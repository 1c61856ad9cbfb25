#!/usr/bin/env bash
# Install Debian's Chromium for the app's browser tests (tests/test_app_browser.py), if it is missing.
# Playwright drives it through executable_path=/usr/bin/chromium, so no browser download is needed.
# Needs root or sudo (apt-get). Without either it says so and exits 0: the browser tests then skip
# with that reason instead of the whole test run stopping here.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install_browser.sh: /usr/bin/chromium is missing and installing it needs root or sudo;" \
       "the browser tests will be skipped" >&2
  exit 0
fi
$SUDO apt-get update
$SUDO apt-get install -y chromium
