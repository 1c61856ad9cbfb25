#!/usr/bin/env bash
# Install Debian's Chromium for the app's browser tests (tests/test_app_browser.py), if it is missing.
# Playwright drives it through executable_path=/usr/bin/chromium, so no browser download is needed.
# Needs root (apt-get); does nothing when /usr/bin/chromium already exists.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update
$SUDO apt-get install -y chromium
