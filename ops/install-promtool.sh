#!/bin/sh
# Install promtool from Debian's own `prometheus` package, if it is missing.
#
# Idempotent: does nothing when `promtool` is already on PATH. Runs as root on
# Debian 12 (bookworm), where the `prometheus` package (2.42.0+ds-5+deb12u1)
# is the only one that ships /usr/bin/promtool; no package ships it alone.
#
# Side effects are limited to /usr/local/bin/promtool (plus apt's package
# lists when they are empty). Installing the whole package with apt-get would
# pull 11 JavaScript/font packages (~96 MB of Prometheus server, web UI and
# deps), create a `prometheus` system user and enable (on systemd hosts:
# start) a Prometheus server on :9090. So instead the .deb is fetched by
# apt (hash-checked against Debian's signed archive), and only the promtool
# binary (a Go program needing nothing but libc) is unpacked from it.
set -eu

PREFIX="${PROMTOOL_PREFIX:-/usr/local/bin}"

if command -v promtool >/dev/null 2>&1; then
    echo "promtool already installed: $(command -v promtool)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-promtool.sh: must run as root (it writes $PREFIX/promtool)" >&2
    exit 1
fi

# A fresh container has no package lists: fetch them only then.
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt-get update -qq
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT INT TERM
# apt downloads as its unprivileged _apt user: let it write the .deb here.
if id _apt >/dev/null 2>&1; then chown _apt "$workdir"; fi

(cd "$workdir" && apt-get download -qq prometheus)
deb="$(ls "$workdir"/prometheus_*.deb)"
dpkg-deb -x "$deb" "$workdir/root"
install -D -m 0755 "$workdir/root/usr/bin/promtool" "$PREFIX/promtool"

"$PREFIX/promtool" --version
