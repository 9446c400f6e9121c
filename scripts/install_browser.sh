#!/bin/sh
# Installs Debian's Chromium for the real-browser test (tests/test_web_browser.py), which drives it with
# Playwright at /usr/bin/chromium. Playwright's own browser download is not used (no network at test time).
set -eu
if [ -x /usr/bin/chromium ]; then
  /usr/bin/chromium --version 2>/dev/null || true
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version 2>/dev/null || true
