"""Where lines come from: files (replay, follow with rotation) and the systemd journal."""
