"""What the timeline's readers hand the text and HTML reports: a key's series, a rule's threshold line,
a destination's delivery status. Built only when a report draws the panels: a JSON replay never
imports this module (each frozen dataclass costs its making at start-up, ~5M instructions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Series:
    """A key's count per bin. `missed`: counted before it led (not in `values`)."""

    label: str
    total: int
    missed: int
    values: list[int]


@dataclass(frozen=True, slots=True)
class Threshold:
    """A rule drawn in its dimension's panel: `per_bin` is threshold/window scaled to one bin."""

    rule: str
    action: str
    threshold: int
    window_s: int
    min_clients: int
    per_bin: float


@dataclass(frozen=True, slots=True)
class DomainStatus:
    domain: str
    relayed: int
    deferred: int
    bounced: int

    @property
    def deferred_ratio(self) -> float:
        return self.deferred / self.relayed if self.relayed else 0.0
