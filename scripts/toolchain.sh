#!/bin/sh
# What building relaywatch's compiled core needs (setup.py, mypyc): a C compiler and the headers of
# the Python that builds. Installs, where missing, gcc and, for Debian's own Python, python3-dev.
# The headers of another Python (pyenv, a source build) come with it or not at all: then the build
# says so and gives the pure-Python form (or fails under RELAYWATCH_COMPILE=1).
#   sh scripts/toolchain.sh [PYTHON]      default: python3
set -eu
python=${1:-python3}
packages=""
command -v "${CC:-gcc}" >/dev/null 2>&1 || packages="gcc"
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
case "$include" in  # /usr/include/python3.X: Debian's Python, whose headers python3-dev brings
    /usr/include/*) [ -e "$include/Python.h" ] || packages="$packages python3-dev" ;;
esac
if [ -n "$packages" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086  # a list of package names
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi
