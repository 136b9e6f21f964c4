"""The state database (SQLite through sqlite-utils) and the checks on the files it trusts."""
