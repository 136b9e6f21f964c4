"""Fleet hosts claiming decisions at the same moment (issue 18): found by bench/fleet_bench.py at
8 hosts (a host process died on `deadlock detected ... relaywatch_claims`, reported as an outage)
when each host claimed a batch's decisions in the batch's order; now every host claims in one order."""

from __future__ import annotations

import dataclasses
import threading
import time

from relaywatch.build import block_keys
from relaywatch.model import Action, Decision, Kind
from relaywatch.store.postgres import Store


def test_two_hosts_claiming_the_same_decisions_in_other_orders_do_not_deadlock(postgres):
    now = time.time()
    batch = [Decision(now, Action.BLOCK, Kind.CLIENT, f"61.177.{i}.50", "client", 12, 600) for i in range(60)]
    stores = [Store(postgres.url(), host=h, block_keys=block_keys) for h in ("mx1", "mx2")]
    ready = threading.Barrier(2)
    failures: list[BaseException] = []

    def decide(store: Store, decisions: list[Decision]) -> None:
        try:
            ready.wait()
            store.commit_batch([], decisions)
        except BaseException as exc:  # noqa: BLE001 -- reported below
            failures.append(exc)

    for round_ in range(5):
        batch = [dataclasses.replace(d, time=now + round_ * 700) for d in batch]  # a new window: claimed again
        orders = (batch, batch[::-1])  # the same targets, decided by the two hosts in opposite orders
        threads = [threading.Thread(target=decide, args=(s, b)) for s, b in zip(stores, orders, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for s in stores:
        s.close()
    assert failures == [], failures
    assert postgres.psql("SELECT count(*) FROM relaywatch_decisions").split() == [str(5 * 60)]
