"""Correlation on small, whole message lifecycles written as log lines."""

from __future__ import annotations

from relaywatch.core.correlate import Correlator, LocalDomains
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.model import LocalRelayed, RelayDenied, Relayed


def run(text: str, correlator: Correlator | None = None) -> list:
    correlator = Correlator() if correlator is None else correlator
    parser = LineParser(YearResolver(2003))
    facts = []
    for line in text.strip().splitlines():
        event = parser.parse(line.strip())
        fact = correlator.feed(event) if event is not None else None
        if fact is not None:
            facts.append(fact)
    return facts


SEED_MESSAGE = """
Mar 16 01:59:38 zebra postfix/smtpd[29327]: connect from unknown[218.144.108.161]
Mar 16 01:59:39 zebra postfix/smtpd[29327]: 8D076AE17: client=unknown[218.144.108.161]
Mar 16 01:59:41 zebra postfix/cleanup[29328]: 8D076AE17: message-id=<2003.03.14.18BE678400294823@hananet.net>
Mar 16 01:59:41 zebra postfix/qmgr[24493]: 8D076AE17: from=<journeypark@hananet.net>, size=725, nrcpt=1 (queue active)
Mar 16 01:59:42 zebra postfix/smtpd[29327]: disconnect from unknown[218.144.108.161]
Mar 16 02:00:11 zebra postfix/smtp[29330]: 8D076AE17: to=<spell013@hanmail.net>, relay=none, delay=32, status=deferred (connect to mx2.hanmail.net[211.43.197.34]: Connection refused)
"""


def test_a_relayed_recipient_carries_client_sender_and_domain():
    [fact] = run(SEED_MESSAGE)
    assert fact == Relayed(fact.time, "8D076AE17", "218.144.108.161", None, "journeypark@hananet.net",
                           "spell013@hanmail.net", "hanmail.net", "deferred")


def test_retries_count_each_recipient_once():
    retries = SEED_MESSAGE.replace("nrcpt=1", "nrcpt=2") + """
Mar 16 02:10:11 zebra postfix/qmgr[24493]: 8D076AE17: from=<journeypark@hananet.net>, size=725, nrcpt=2 (queue active)
Mar 16 02:10:41 zebra postfix/smtp[29331]: 8D076AE17: to=<spell013@hanmail.net>, relay=none, delay=632, status=deferred (connect to mx2.hanmail.net[211.43.197.34]: Connection refused)
Mar 16 02:10:42 zebra postfix/smtp[29331]: 8D076AE17: to=<spell014@hanmail.net>, relay=mx1.hanmail.net[211.43.197.21], delay=633, status=sent (250 ok)
Mar 16 02:40:41 zebra postfix/smtp[29332]: 8D076AE17: to=<spell013@hanmail.net>, relay=mx1.hanmail.net[211.43.197.21], delay=2432, status=sent (250 ok)
"""
    facts = run(retries)
    assert [f.recipient for f in facts] == ["spell013@hanmail.net", "spell014@hanmail.net"]


def test_inbound_mail_delivered_locally_is_not_relayed():
    assert run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=mail-ot1-f41.google.com[209.85.210.41]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<friend@gmail.com>, size=900, nrcpt=2 (queue active)
Mar 16 09:00:01 zebra postfix/local[3]: 1A2B3C4D5E: to=<zebra@woodelf.org>, relay=local, delay=1, status=sent (delivered to mailbox)
Mar 16 09:00:01 zebra postfix/lmtp[4]: 1A2B3C4D5E: to=<cat@woodelf.org>, relay=mail.woodelf.org[private/dovecot-lmtp], delay=1, status=sent (250 2.0.0 Saved)
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: removed
""") == []


def test_forwarded_mail_is_not_relayed():
    assert run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=mail-ot1-f41.google.com[209.85.210.41]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<friend@gmail.com>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<zebra@example.net>, orig_to=<zebra@woodelf.org>, relay=mx.example.net[192.0.2.25]:25, delay=1, status=sent (250 ok)
""") == []


def test_pickup_is_a_local_submission_not_a_client_relay():
    assert [type(f) for f in run("""
Mar 16 09:00:00 zebra postfix/pickup[1]: 1A2B3C4D5E: uid=0 from=<root>
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<root@woodelf.org>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<admin@example.net>, relay=mx.example.net[192.0.2.25]:25, delay=1, status=sent (250 ok)
""")] == [LocalRelayed]  # counted per uid and sender (tests/test_local_submission.py), never per client


def test_known_local_domains_decide_for_every_agent():
    lines = """
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[198.51.100.4]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=3 (queue active)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<x@backup.example>, relay=primary.backup.example[192.0.2.25]:25, delay=1, status=sent (250 ok)
Mar 16 09:00:02 zebra postfix/pipe[4]: 1A2B3C4D5E: to=<y@far.example>, relay=uucp, delay=1, status=sent (delivered via uucp service)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<z@sub.woodelf.org>, relay=in.woodelf.org[192.0.2.26]:25, delay=1, status=sent (250 ok)
"""
    facts = run(lines, Correlator(LocalDomains(("backup.example", ".woodelf.org"))))
    assert [f.recipient for f in facts] == ["y@far.example"]
    assert [f.recipient for f in run(lines)] == ["x@backup.example", "z@sub.woodelf.org"]


def test_a_content_filter_hands_the_origin_to_the_reinjected_message():
    facts = run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[203.0.113.7], sasl_method=PLAIN, sasl_username=alice
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<alice@woodelf.org>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:02 zebra postfix/10025/smtpd[5]: 2B3C4D5E6F: client=localhost[127.0.0.1]
Mar 16 09:00:02 zebra postfix/amavis/smtp[3]: 1A2B3C4D5E: to=<bob@example.net>, relay=127.0.0.1[127.0.0.1]:10024, delay=1, status=sent (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 2B3C4D5E6F)
Mar 16 09:00:02 zebra postfix/qmgr[2]: 2B3C4D5E6F: from=<alice@woodelf.org>, size=1200, nrcpt=1 (queue active)
Mar 16 09:00:03 zebra postfix/smtp[6]: 2B3C4D5E6F: to=<bob@example.net>, relay=mx.example.net[192.0.2.25]:25, delay=1, status=sent (250 ok)
""")
    assert [(f.qid, f.client, f.sasl_user) for f in facts] == [("2B3C4D5E6F", "203.0.113.7", "alice")]


def test_xforward_orig_client_is_trusted_only_from_loopback():
    facts = run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=localhost[127.0.0.1], orig_queue_id=0A1B2C3D4E, orig_client=unknown[203.0.113.8]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<x@far.example>, relay=mx.far.example[192.0.2.25]:25, delay=1, status=sent (250 ok)
Mar 16 09:00:03 zebra postfix/smtpd[1]: 2A2B3C4D5E: client=unknown[198.51.100.9], orig_queue_id=0A1B2C3D4F, orig_client=unknown[8.8.8.8]
Mar 16 09:00:04 zebra postfix/qmgr[2]: 2A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:05 zebra postfix/smtp[3]: 2A2B3C4D5E: to=<x@far.example>, relay=mx.far.example[192.0.2.25]:25, delay=1, status=sent (250 ok)
""")
    assert [f.client for f in facts] == ["203.0.113.8", "198.51.100.9"]


def test_relay_denied_is_a_fact_but_a_remote_refusal_is_not():
    facts = run("""
Oct 22 13:29:42 conch postfix/smtpd[29528]: NOQUEUE: reject: RCPT from 1-163-31-151.dynamic.hinet.net[1.163.31.151]: 554 5.7.1 <vkihwpdh@yahoo.com.tw>: Relay access denied; from=<z2007tw@yahoo.com.tw> to=<vkihwpdh@yahoo.com.tw> proto=SMTP helo=<67.223.235.197>
Aug 10 03:44:46 mail postfix/smtp[14879]: E5D4840DA0: to=<cc@docomo.ne.je>, relay=docomo.ne.je[157.112.187.13]:25, delay=151541, delays=151540/0.03/0.12/0.5, dsn=4.7.1, status=deferred (host docomo.ne.je[157.112.187.13] said: 454 4.7.1 <cc@docomo.ne.je>: Relay access denied (in reply to RCPT TO command))
""")
    assert facts == [RelayDenied(facts[0].time, "1.163.31.151", None)]


def test_a_forged_removed_inside_a_message_id_does_not_end_another_message():
    facts = run(SEED_MESSAGE.replace(
        "message-id=<2003.03.14.18BE678400294823@hananet.net>", "message-id=<x> 8D076AE17: removed"))
    assert len(facts) == 1


def test_a_reused_short_queue_id_starts_a_new_message():
    facts = run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[198.51.100.4]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=2 (queue active)
Mar 16 11:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[198.51.100.5]
Mar 16 11:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<c@d.example>, size=900, nrcpt=1 (queue active)
Mar 16 11:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<x@far.example>, relay=mx.far.example[192.0.2.25]:25, delay=1, status=sent (250 ok)
""")
    assert [(f.client, f.sender) for f in facts] == [("198.51.100.5", "c@d.example")]


def test_memory_is_bounded_by_count_and_by_idle_time():
    correlator = Correlator(max_messages=100, max_idle_s=3600)
    parser = LineParser(YearResolver(2003))
    for i in range(1000):
        correlator.feed(parser.parse(f"Mar 16 09:00:00 zebra postfix/smtpd[1]: {i:010X}: client=unknown[198.51.100.4]"))
    assert len(correlator) == 100 and correlator.evicted == 900
    correlator.feed(parser.parse("Mar 16 11:00:01 zebra postfix/smtpd[1]: FFFFFFFFFF: client=unknown[198.51.100.4]"))
    assert len(correlator) == 1
    assert correlator.messages == 1001


def test_a_message_is_forgotten_once_every_recipient_was_seen():
    correlator = Correlator()
    run(SEED_MESSAGE, correlator)
    assert len(correlator) == 0


def test_a_message_rejected_at_end_of_data_is_forgotten():
    correlator = Correlator()
    run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1D8CC1CA0A7F: client=unknown[192.0.2.151]
Mar 16 09:00:01 zebra postfix/smtpd[1]: 1D8CC1CA0A7F: milter-reject: END-OF-MESSAGE from unknown[192.0.2.151]: 550 5.7.1 Command rejected; from=<s@x.example> to=<h@y.example> proto=ESMTP helo=<z>
""", correlator)
    assert len(correlator) == 0


def test_a_loopback_relayhost_counts_when_the_local_domains_are_known():
    lines = """
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[127.0.0.9]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=2 (queue active)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<x@far.example>, relay=127.0.0.1[127.0.0.1]:2525, delay=1, status=sent (250 2.0.0 Ok)
Mar 16 09:00:02 zebra postfix/smtp[3]: 1A2B3C4D5E: to=<y@far.example>, relay=127.0.0.1[127.0.0.1]:10024, delay=1, status=sent (250 2.0.0 Ok: queued as 2B3C4D5E6F)
"""
    assert run(lines) == []  # without local domains a loopback hop may be a content filter
    facts = run(lines, Correlator(LocalDomains((), known=True)))
    assert [f.recipient for f in facts] == ["x@far.example"]


def test_open_messages_survive_a_restart_through_changes_and_load():
    first = Correlator(track_changes=True)
    head, tail = SEED_MESSAGE.strip().splitlines()[:4], SEED_MESSAGE.strip().splitlines()[4:]
    assert run("\n".join(head), first) == []
    rows, gone = first.changes()
    assert [r[0] for r in rows] == ["zebra/8D076AE17"] and gone == []  # keyed by (host, queue id)
    assert first.changes() == ([], [])
    second = Correlator(track_changes=True)
    second.load(rows)
    [fact] = run("\n".join(tail), second)
    assert (fact.client, fact.sender) == ("218.144.108.161", "journeypark@hananet.net")
    assert second.changes() == ([], ["zebra/8D076AE17"])  # every recipient seen: forgotten


def test_origins_of_queued_mail_are_reported_until_removed():
    correlator = Correlator(track_changes=True)
    run(SEED_MESSAGE + "Mar 16 02:00:12 zebra postfix/qmgr[24493]: 8D076AE17: removed\n", correlator)
    arrived, departed = correlator.origins()
    assert [(q, c) for q, c, _, _ in arrived] == [("8D076AE17", "218.144.108.161")]
    assert departed == ["8D076AE17"]
    assert correlator.origins() == ([], [])
    assert Correlator().origins() == ([], [])


def test_the_host_of_an_open_message_survives_a_restart_through_the_store(tmp_path):
    """Two hosts of a central log with the same short queue id, stopped between client= and delivery."""
    from dataclasses import replace

    from relaywatch.store.sqlite import Store

    parser = LineParser(YearResolver(2025))

    def events(text: str) -> list:
        return [replace(e, host=line.split()[3]) for line in text.strip().splitlines()
                if (e := parser.parse(line.strip())) is not None]

    head = events("""
Mar  7 10:00:00 mx2 postfix/smtpd[901]: 8D076AE17: client=unknown[45.95.169.23]
Mar  7 10:00:01 mx2 postfix/qmgr[902]: 8D076AE17: from=<promo@cheap-pills.example>, size=1500, nrcpt=1 (queue active)
Mar  7 10:00:01 mx1 postfix/smtpd[501]: 8D076AE17: client=mail-wr1-f54.google.com[209.85.221.54]
Mar  7 10:00:02 mx1 postfix/qmgr[502]: 8D076AE17: from=<friend@gmail.com>, size=4000, nrcpt=1 (queue active)
""")
    tail = events("""
Mar  7 10:00:03 mx2 postfix/smtp[903]: 8D076AE17: to=<v1@hanmail.net>, relay=mx1.hanmail.net[211.231.106.11]:25, delay=2, status=sent (250 2.0.0 Ok)
Mar  7 10:00:03 mx1 postfix/local[503]: 8D076AE17: to=<ann@example.com>, relay=local, delay=1, status=sent (delivered to mailbox)
""")
    first = Correlator(track_changes=True)
    for e in head:
        first.feed(e)
    store = Store(tmp_path / "state.db")
    store.commit_batch([], messages=first.changes())
    store.close()
    store = Store(tmp_path / "state.db")
    assert sorted(r[0] for r in store.open_messages()) == ["mx1/8D076AE17", "mx2/8D076AE17"]
    second = Correlator(track_changes=True)
    second.load(store.open_messages())
    facts = [f for e in tail if (f := second.feed(e)) is not None]
    assert [(f.client, f.recipient) for f in facts] == [("45.95.169.23", "v1@hanmail.net")]
    store.commit_batch([], messages=second.changes())
    assert store.open_messages() == []
    store.close()


def test_a_proxy_accept_before_the_copys_client_line_is_kept_for_it():
    from relaywatch.model import ClientSeen, Delivery, ProxyAccept, QueueActive

    correlator = Correlator()
    correlator.feed(ProxyAccept(1.0, "1C2D3E4F5A", "45.95.169.23", "unknown", None, host="mx3"))
    correlator.feed(ClientSeen(1.1, "1C2D3E4F5A", "127.0.0.1", "localhost", None, None, host="mx3"))
    correlator.feed(QueueActive(1.2, "1C2D3E4F5A", "x@spam.example", 900, 1, host="mx3"))
    fact = correlator.feed(Delivery(2.0, "1C2D3E4F5A", "smtp", "v@gmail.com", None, "gmail-smtp-in.l.google.com",
                                    "142.250.102.27", "sent", "250 ok", host="mx3"))
    assert fact is not None and fact.client == "45.95.169.23"


def test_held_copies_fall_due_after_the_bound_with_the_filters_address():
    correlator = Correlator(hold_s=60)
    run("""
Mar 16 09:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[203.0.113.7]
Mar 16 09:00:01 zebra postfix/qmgr[2]: 1A2B3C4D5E: from=<a@b.example>, size=900, nrcpt=1 (queue active)
Mar 16 09:00:02 zebra postfix/10025/smtpd[5]: 2B3C4D5E6F: client=localhost[127.0.0.1]
Mar 16 09:00:02 zebra postfix/amavis/smtp[3]: 1A2B3C4D5E: to=<x@far.example>, relay=127.0.0.1[127.0.0.1]:10024, delay=1, status=sent (250 2.0.0 Ok: queued as 2B3C4D5E6F)
Mar 16 09:01:00 zebra postfix/10025/smtpd[5]: 3C4D5E6F7A: client=localhost[127.0.0.1]
Mar 16 09:01:01 zebra postfix/qmgr[2]: 3C4D5E6F7A: from=<a@b.example>, size=900, nrcpt=1 (queue active)
Mar 16 09:01:02 zebra postfix/smtp[6]: 3C4D5E6F7A: to=<y@far.example>, relay=mx.far.example[192.0.2.25]:25, delay=1, status=sent (250 ok)
""", correlator)
    assert correlator.take_released() == []  # held: its link may still come
    run("Mar 16 09:02:03 zebra postfix/qmgr[2]: 3C4D5E6F7A: removed", correlator)
    [fact] = correlator.take_released()
    assert (fact.recipient, fact.client) == ("y@far.example", "127.0.0.1")
