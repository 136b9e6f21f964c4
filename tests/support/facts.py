"""Facts for the pure layers (policy, enforcement, reports), built with only the fields a test cares about."""

from __future__ import annotations

from relaywatch.model import Relayed


def relayed(t: float, client: str = "192.0.2.7", *, qid: str = "Q1", sasl: str | None = None,
            sender: str = "a@woodelf.org", recipient: str | None = None, domain: str = "x.example",
            status: str = "sent", queued: float | None = None) -> Relayed:
    """One relayed recipient at `t` from `client`: its recipient r@`domain` unless named, queued at `t`
    (logged and delivered at once) unless `queued` says when its client= line was logged."""
    return Relayed(t, qid, client, sasl, sender, recipient or f"r@{domain}", domain, status,
                   t if queued is None else queued)
