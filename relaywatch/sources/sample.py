"""The bundled sample day (2003-03-16, the incident relaywatch was built for): `replay --sample`'s log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

SAMPLE = "sample-2003-03-16.log.gz"
SAMPLE_YEAR = 2003  # classic syslog lines carry no year


@contextmanager
def sample_log() -> Iterator[str]:
    """The sample's path on disk while the block runs (an installed package need not be plain files)."""
    from importlib import resources  # with tempfile and random: only `replay --sample` needs them

    with resources.as_file(resources.files("relaywatch") / "data" / SAMPLE) as path:
        yield str(path)
