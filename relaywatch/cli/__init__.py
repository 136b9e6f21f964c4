"""The `relaywatch` command (entry point `relaywatch.cli:main`): one module per command family.

main: the group, options shared by all, errors to exit codes; replay; blocks (block, unblock, blocks, check);
queue; daemon (run, status); report (report, digest); admin (audit, config, install-maps, notify-test).
"""

from relaywatch.cli.main import main

__all__ = ["main"]
