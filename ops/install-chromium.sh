#!/bin/sh
# Install Debian's `chromium` package, if it is missing, for the web view's tests
# (tests/test_ui.py loads /ui in headless Chromium).
#
# Idempotent: does nothing when `chromium` is already on PATH. As root it runs
# `apt-get install -y --no-install-recommends chromium` (Debian 12 bookworm:
# about 100 packages, ~300 MB, mostly fonts and X/GTK libraries; no service is
# started), fetching apt's package lists only when they are empty. As any other
# user it says what to run and exits 1.
set -eu

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-chromium.sh: chromium is missing and installing it needs root:" >&2
    echo "  sudo sh ops/install-chromium.sh   (or: sudo apt-get install chromium)" >&2
    exit 1
fi

# A fresh container has no package lists: fetch them only then.
if ! apt-cache show chromium >/dev/null 2>&1; then
    apt-get update -qq
fi

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

chromium --version
