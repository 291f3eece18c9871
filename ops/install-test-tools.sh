#!/bin/sh
# Install what the tests drive besides Python: Debian's `chromium` (tests/test_ui.py
# loads /ui in headless Chromium) and `tmux` (tests/test_top.py reads
# `orchestrator top` off a tmux screen).
#
# Idempotent: does nothing for a tool already on PATH. As root it runs
# `apt-get install -y --no-install-recommends` for what is missing (chromium on
# Debian 12 bookworm: about 100 packages, ~300 MB, mostly fonts and X/GTK
# libraries; no service is started), fetching apt's package lists only when they
# are empty. As any other user it says what to run and exits 1.
set -eu

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"

if [ -z "$missing" ]; then
    echo "test tools already installed: $(command -v chromium) $(command -v tmux)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-tools.sh:$missing missing, and installing needs root:" >&2
    echo "  sudo sh ops/install-test-tools.sh   (or: sudo apt-get install$missing)" >&2
    exit 1
fi

# A fresh container has no package lists: fetch them only then.
if ! apt-cache show chromium tmux >/dev/null 2>&1; then
    apt-get update -qq
fi

# shellcheck disable=SC2086  # the list is ours: package names, split on purpose
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing

chromium --version
tmux -V
