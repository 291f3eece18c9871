#!/bin/sh
# Install promtool from Debian's own `prometheus` package, if it is missing.
#
# Runs on Debian 12 (bookworm), where the `prometheus` package
# (2.42.0+ds-5+deb12u1) is the only one that ships /usr/bin/promtool; no
# package ships it alone. Root is not needed: `apt-get download` and
# `dpkg-deb -x` work as any user, as long as apt's package lists exist.
#
# Where it goes (PROMTOOL_PREFIX overrides):
#   as root:     /usr/local/bin/promtool
#   as non-root: <project>/.venv/bin/promtool when that directory exists
#                (`uv run` puts .venv/bin on PATH, so the tests find it),
#                else $HOME/.local/bin/promtool
#
# Idempotent: does nothing when `promtool` is already on PATH, or already in
# the prefix. PROMTOOL_FORCE=1 ignores a promtool on PATH and installs into
# the prefix anyway (still nothing to do when the prefix has one).
#
# Side effects are limited to $PREFIX/promtool (plus, as root only, apt's
# package lists when they are empty). Installing the whole package with
# apt-get would pull 11 JavaScript/font packages (~96 MB of Prometheus
# server, web UI and deps), create a `prometheus` system user and enable (on
# systemd hosts: start) a Prometheus server on :9090. So instead the .deb is
# fetched by apt (hash-checked against Debian's signed archive), and only the
# promtool binary (a Go program needing nothing but libc) is unpacked from it.
set -eu

me="install-promtool.sh"
uid="$(id -u)"

if [ -n "${PROMTOOL_PREFIX:-}" ]; then
    PREFIX="$PROMTOOL_PREFIX"
elif [ "$uid" -eq 0 ]; then
    PREFIX=/usr/local/bin
else
    project="$(cd "$(dirname "$0")/.." && pwd)"
    if [ -d "$project/.venv/bin" ]; then
        PREFIX="$project/.venv/bin"
    else
        PREFIX="${HOME:?HOME is not set; set PROMTOOL_PREFIX}/.local/bin"
    fi
fi

if [ "${PROMTOOL_FORCE:-0}" != 1 ] && command -v promtool >/dev/null 2>&1; then
    echo "promtool already installed: $(command -v promtool)"
    exit 0
fi
if [ -x "$PREFIX/promtool" ]; then
    echo "promtool already installed: $PREFIX/promtool"
    exit 0
fi

# How to get promtool without this script, for every failure below.
fail() {
    # Shell builtins only: this also runs where the tools it names are absent.
    printf '%s\n' >&2 "$me: $1" "promtool was not installed. Other ways to get it:"
    if [ "$uid" -ne 0 ]; then
        printf '%s\n' >&2 \
            "  - run this script once as root (it writes /usr/local/bin/promtool and" \
            "    fetches apt's package lists if they are empty);"
    fi
    printf '%s\n' >&2 \
        "  - or, on Debian/Ubuntu, fetch the \`prometheus\` .deb by hand (e.g. from" \
        "    https://packages.debian.org/bookworm/prometheus), unpack it with" \
        "    \`dpkg-deb -x prometheus_*.deb dir\` (or \`ar x\` + \`tar\`) and copy" \
        "    dir/usr/bin/promtool into \$PROMTOOL_PREFIX (now: $PREFIX);" \
        "  - or, anywhere, download the official release tarball" \
        "    prometheus-<version>.linux-<arch>.tar.gz from" \
        "    https://github.com/prometheus/prometheus/releases, and put the" \
        "    \`promtool\` it contains on PATH (e.g. into $PREFIX)."
    exit 1
}

for tool in apt-get apt-cache dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 \
        || fail "\`$tool\` is not available (this script needs apt and dpkg: Debian/Ubuntu)."
done

# A fresh container has no package lists: fetch them only then (root only).
if ! apt-cache show prometheus >/dev/null 2>&1; then
    if [ "$uid" -ne 0 ]; then
        fail "apt knows no \`prometheus\` package (its package lists are empty or lack it), and updating them needs root."
    fi
    apt-get update -qq
fi

mkdir -p "$PREFIX" || fail "cannot create $PREFIX (set PROMTOOL_PREFIX to a writable directory)."
[ -w "$PREFIX" ] || fail "$PREFIX is not writable (set PROMTOOL_PREFIX to a writable directory)."

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir" "$PREFIX/.promtool.$$"' EXIT
trap 'exit 130' INT TERM
# As root, apt downloads as its unprivileged _apt user: let it write the .deb
# here. As anyone else, apt downloads as that user, who owns $workdir.
if [ "$uid" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$workdir"; fi

(cd "$workdir" && apt-get download -qq prometheus) \
    || fail "\`apt-get download prometheus\` failed (network? see apt's message above)."
deb="$(ls "$workdir"/prometheus_*.deb)"
dpkg-deb -x "$deb" "$workdir/root"
# Install via a temporary name in the prefix, then rename: an interrupted run
# never leaves a half-written $PREFIX/promtool that the check above would
# take for a finished one.
install -m 0755 "$workdir/root/usr/bin/promtool" "$PREFIX/.promtool.$$"
mv -f "$PREFIX/.promtool.$$" "$PREFIX/promtool"

"$PREFIX/promtool" --version
case ":$PATH:" in
    *":$PREFIX:"*) ;;
    *) echo "$me: note: $PREFIX is not on PATH; add it, or use \`uv run\` for .venv/bin." >&2 ;;
esac
