#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (tests/browser).
# As root (CI runs as root) it installs the `chromium` package with apt-get; as anyone else it says how.
# Playwright drives this system browser; it never downloads one of its own.
# GQA_CHROMIUM names another browser binary (Chromium or Chrome): the one place the browser is chosen,
# read here and by tests/browser/conftest.py (GitHub's Ubuntu runners use /usr/bin/google-chrome).
set -euo pipefail

CHROMIUM=${GQA_CHROMIUM:-/usr/bin/chromium}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && [ "$CHROMIUM" = /usr/bin/chromium ]; then
    echo "ensure_chromium: $CHROMIUM is missing; installing the Debian package 'chromium' (takes a minute or two)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    if [ ! -x "$CHROMIUM" ]; then
        echo "ensure_chromium: apt-get finished but $CHROMIUM is still missing" >&2
        exit 1
    fi
    echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
    exit 0
fi

cat >&2 <<MSG
The browser tests need Chromium at $CHROMIUM, and it is not installed (as root, \`make test\` installs it).
Install it once (Debian):

    sudo apt-get install chromium

or point GQA_CHROMIUM at a Chromium or Chrome you have (Ubuntu ships Chromium only as a snap), e.g.

    GQA_CHROMIUM=/usr/bin/google-chrome make test

then run \`make test\` again. To run everything except the browser tests: make lint unit notebook-tests
MSG
exit 1
