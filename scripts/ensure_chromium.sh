#!/bin/sh
# Install Debian's Chromium when it is missing: the console's browser tests drive it with
# Playwright (tests/agent/console), which cannot download a browser build of its own here.
# Idempotent: does nothing when /usr/bin/chromium is present.
set -eu

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "Chromium is not installed and this is not root: run 'apt-get install -y chromium' as root" >&2
    exit 1
fi

echo "installing Chromium (Debian package chromium) for the console's browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
