"""The daemon's daily record as a pipeline sink: one `DayStats` per local calendar day of log time.

The daemon plugs one `DailyRecord` into every pipeline it builds (it outlives a SIGHUP), takes the
finished days to store them, and asks for the current one to send or save; the pipeline only feeds it.
"""

from __future__ import annotations

from relaywatch.model import Decision, LocalRelayed, RelayDenied, Relayed
from relaywatch.reports.digest import DayStats


class DailyRecord:
    """Counts each fact into its day; at local midnight of log time the day is finished and a new one begins.

    `limit`: a fact stamped later than this (a forged far-future date) ends no day (the daemon keeps it at
    now + 1 h). `block_s`: how long a block lasts, for the day's check that blocks held.
    """

    def __init__(self, day: DayStats, block_s: int) -> None:
        self.day = day
        self.block_s = block_s
        self.limit = float("inf")
        self.finished: list[DayStats] = []

    def roll(self, t: float) -> None:
        """Finish the current day if `t` is past its end (log time, or wall time when the log is idle)."""
        if t >= self.day.end:
            self.finished.append(self.day)
            self.day = DayStats.for_time(t)

    def take_finished(self) -> list[DayStats]:
        """The days finished since the last call, oldest first."""
        finished, self.finished = self.finished, []
        return finished

    def held(self, n: int) -> None:
        """Queued messages held after today's blocks."""
        self.day.held += n

    # --- the pipeline's sink ----------------------------------------------------------

    def fact(self, fact: Relayed | LocalRelayed) -> None:
        self._roll_at(fact.time)
        if type(fact) is Relayed:  # mail submitted on the host has no client: the digest is about clients
            self.day.add(fact)

    def denied(self, fact: RelayDenied) -> None:
        self._roll_at(fact.time)
        self.day.add(fact)

    def decision(self, d: Decision) -> None:
        if d.action == "block":
            self.day.block(d.kind, d.target, d.time, d.time + self.block_s)

    def _roll_at(self, t: float) -> None:
        if t >= self.day.end and t <= self.limit:
            self.roll(t)
