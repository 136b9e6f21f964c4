"""relaywatch: notice open-relay abuse in a Postfix log and shut it down."""

# The one place the version is written: pyproject.toml reads it, and so do
# `relaywatch --version` and packaging/debian/changelog's test.
__version__ = "0.1.0"
