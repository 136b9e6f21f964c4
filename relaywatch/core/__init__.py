"""The pure core: log lines in, events, facts and decisions out. No I/O, no third-party imports."""
