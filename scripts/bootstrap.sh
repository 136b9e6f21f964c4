#!/bin/sh
# Set relaywatch up in ./.venv on a Debian 12 machine that has only python3.
#   sh scripts/bootstrap.sh          relaywatch itself, its core compiled with mypyc (~1.2-1.6x the
#                                    replay speed): installs gcc and python3-dev where missing, unless
#                                    RELAYWATCH_COMPILE=0 asks for the pure-Python form
#   sh scripts/bootstrap.sh --test   plus the test tools, Debian's postfix (never configured
#                                    system-wide: "No configuration"; tests run private instances)
#                                    systemd-journal-remote (tests write real journal files), and
#                                    PostgreSQL 15 with postfix-pgsql (fleet tests start a private
#                                    server in a temp dir; they never use Debian's own cluster)
set -eu
cd "$(dirname "$0")/.."

packages=""
python3 -c 'import ensurepip, venv' 2>/dev/null || packages="python3-venv"
if [ "${1-}" = "--test" ]; then
    command -v postconf >/dev/null 2>&1 || [ -x /usr/sbin/postconf ] || packages="$packages postfix"
    [ -x /lib/systemd/systemd-journal-remote ] || packages="$packages systemd-journal-remote"
    [ -x /usr/lib/postgresql/15/bin/initdb ] || packages="$packages postgresql-15"
    [ -e /usr/lib/postfix/postfix-pgsql.so ] || packages="$packages postfix-pgsql"
fi
if [ -n "$packages" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "${1-}" = "--test" ]; then
    # Editable, so always pure Python (setup.py): nothing to compile, no compiler needed.
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
else
    [ "${RELAYWATCH_COMPILE-}" = 0 ] || sh scripts/toolchain.sh .venv/bin/python
    .venv/bin/pip install -q --disable-pip-version-check .
fi
