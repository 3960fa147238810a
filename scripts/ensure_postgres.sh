#!/bin/sh
# Install Debian's PostgreSQL server when its binaries are missing: the test suite starts a
# throwaway server from them (tests/pg.py). Idempotent: does nothing when initdb is present.
set -eu

for initdb in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$initdb" ]; then
        exit 0
    fi
done

if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL is not installed and this is not root: run 'apt-get install -y postgresql' as root" >&2
    exit 1
fi

echo "installing PostgreSQL (Debian package postgresql) for the test suite" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package's own cluster is not used by the tests; leave no server running.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for conf in /etc/postgresql/*/main; do
        [ -d "$conf" ] || continue
        version=$(basename "$(dirname "$conf")")
        pg_ctlcluster "$version" main stop >/dev/null 2>&1 || true
    done
fi
