#!/usr/bin/env bash
# routevit setup for a Debian machine: system packages (Arm GCC + newlib, QEMU, Fashion-MNIST, ccache),
# a Python 3.11 virtual environment in .venv, and routevit installed into it (editable, with test
# extras). Safe to run again: it only does what is missing, and is quick when nothing is.
#
# Optional local copies, for machines without GitHub (CI sets both from ../shared):
#   ROUTEVIT_TFLM_FROM=DIR        local copies of TFLM and its pinned pieces (checkouts, bare git
#                                 dirs or archives): the TFLM tree is set up from them
#   ROUTEVIT_RENODE_FROM=ARCHIVE  a Renode build (.tar.gz) for Debian's Mono: mono-complete is
#                                 installed and Renode unpacked into $ROUTEVIT_CACHE/renode
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib
              qemu-system-arm dataset-fashion-mnist ccache)
VENV=.venv
STAMP="$VENV/.routevit-setup"

say() { echo "setup: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_install() {
    if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
        say "need root (or sudo) to install: $*"
        exit 1
    fi
    say "installing Debian packages: $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# 1. Debian packages
if [ -n "${ROUTEVIT_RENODE_FROM:-}" ]; then
    APT_PACKAGES+=(mono-complete)
fi
missing=()
for package in "${APT_PACKAGES[@]}"; do
    installed "$package" || missing+=("$package")
done

# 2. Python 3.11 with venv support (pyenv's or Debian's)
python_ok() { "$1" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
PYTHON=""
for candidate in python3.11 /usr/bin/python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
        PYTHON=$(command -v "$candidate")
        break
    fi
done
if [ -z "$PYTHON" ]; then
    missing+=(python3.11 python3.11-venv)
    PYTHON=/usr/bin/python3.11
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# 3. The virtual environment and routevit in it
if [ -x "$VENV/bin/python" ] && ! python_ok "$VENV/bin/python"; then
    say "$VENV is not Python 3.11; recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ] || [ ! -x "$VENV/bin/routevit" ] \
        || ! "$VENV/bin/python" -c 'import toolchain, pytest' 2>/dev/null; then
    say "installing routevit and its Python dependencies into $VENV (the first time takes a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" > "$STAMP"
fi

# 4. Local copies of TFLM and Renode, when given
CACHE="${ROUTEVIT_CACHE:-$HOME/.cache/routevit}"
if [ -n "${ROUTEVIT_TFLM_FROM:-}" ]; then
    "$VENV/bin/routevit" setup-tflm --offline --from "$ROUTEVIT_TFLM_FROM" >/dev/null
fi
if [ -n "${ROUTEVIT_RENODE_FROM:-}" ]; then
    if [ ! -f "$ROUTEVIT_RENODE_FROM" ]; then
        say "ROUTEVIT_RENODE_FROM=$ROUTEVIT_RENODE_FROM: no such archive"
        exit 1
    fi
    # Never under $TMPDIR/renode-*: Renode deletes such folders it does not own.
    renode_dir="$CACHE/renode"
    renode_want=$(sha256sum "$ROUTEVIT_RENODE_FROM" | cut -d' ' -f1)
    if [ ! -x "$renode_dir/renode" ] || [ "$(cat "$renode_dir/.routevit-archive" 2>/dev/null)" != "$renode_want" ]; then
        say "unpacking Renode from $ROUTEVIT_RENODE_FROM into $renode_dir"
        rm -rf "$renode_dir.new" && mkdir -p "$renode_dir.new"
        tar xzf "$ROUTEVIT_RENODE_FROM" -C "$renode_dir.new" --strip-components=1
        echo "$renode_want" > "$renode_dir.new/.routevit-archive"
        rm -rf "$renode_dir" && mv "$renode_dir.new" "$renode_dir"
    fi
fi
say "ready: $VENV/bin/routevit"
