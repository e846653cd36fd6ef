#!/usr/bin/env bash
# Install Chromium from the Debian packages for the browser tests (tests/test_report.py, and
# tests/test_serve.py through Playwright, which is told to use this Chromium and downloads none).
# Idempotent: does nothing when /usr/bin/chromium is there. Needs root (CI runs as root).
# About 45 s here (apt-get update plus ~110 MB of packages).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ci_browser.sh: needs root to apt-get install chromium" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
