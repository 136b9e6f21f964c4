"""Issue 12, items 1, 3, 4 and 6, through replay on Postfix-shaped logs (2025, global addresses):
authenticated relaying never feeds the client and subnet rules, a block covers the narrowest
network that covers the abuse, the host's own addresses are never blocked, slow rotation is caught.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from relaywatch.config import Config
from support.maillog import T0, Log, blocks, rcpts

DOMAINS = ["gmail.com", "outlook.com", "web.de", "hanmail.net"]


# --- item 1: authenticated mail is the SASL-user rule's business ---------------------------

@pytest.mark.parametrize("port", ["submission/smtpd", "smtpd"])
@pytest.mark.parametrize("n", [60, 90, 140])
@pytest.mark.parametrize("amavis", [False, True])
def test_one_login_one_message_to_many_bcc_recipients_blocks_nothing(tmp_path, port, n, amavis):
    log = Log()
    log.smtp(T0, "84.160.33.7", [f"parent{i}@{DOMAINS[i % 4]}" for i in range(n)],
             sender="teacher@school.example.org", sasl="teacher", name="p54a02107.dip0.t-ipconnect.de", port=port,
             amavis=amavis)
    result = log.replay(tmp_path)
    assert result.totals.relayed == n
    assert blocks(result) == []
    assert result.tally.sasl_users.top() == [("teacher", n)]


@pytest.mark.parametrize(("style", "amavis"), [("rfc3339", False), ("bsd", False), ("rfc3339", True)])
def test_25_users_behind_one_office_nat_30_mails_an_hour_each_block_nothing(tmp_path, style, amavis):
    log, rng = Log(), random.Random(25)
    for user in range(25):
        for k in range(60):  # two hours
            t = T0 + k * 120 + rng.uniform(0, 100)
            to = [f"c{user}.{k}@{rng.choice(DOMAINS)}" for _ in range(rng.choice([1, 1, 2]))]
            log.smtp(t, "80.187.110.14", to, sender=f"user{user}@office.example.org", sasl=f"user{user}",
                     port="submission/smtpd", amavis=amavis)
    result = log.replay(tmp_path, style=style)
    assert result.totals.relayed > 1500
    assert result.decisions == [] or all(d.action == "alert" and d.kind == "destination" for d in result.decisions)


CARRIERS = ["176.0.{a}.{b}", "80.187.{a}.{b}", "2a01:598:a01a:{a:x}{b:02x}::{b:x}"]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_ten_employees_on_one_mobile_carrier_16_block_nothing(tmp_path, carrier):
    log, rng = Log(), random.Random(carrier)
    for emp in range(10):
        for k in range(7):  # every mail from a fresh carrier address, as mobile phones get
            ip = carrier.format(a=rng.randint(0, 255), b=rng.randint(1, 254))
            to = [f"x{emp}.{k}.{j}@{rng.choice(DOMAINS)}" for j in range(rng.randint(2, 6))]
            log.smtp(T0 + rng.uniform(0, 1800), ip, to, sender=f"emp{emp}@firm.example.org", sasl=f"emp{emp}",
                     port="submission/smtpd")
    result = log.replay(tmp_path)
    assert [d for d in result.decisions if d.kind in ("client", "subnet", "sasl_user")] == []


def test_an_allow_listed_login_is_exempt_from_everything(tmp_path):
    log = Log()
    for k in range(40):  # 400 recipients in 40 minutes: over the SASL, client, sender and destination rules
        log.smtp(T0 + k * 60, "91.64.20.5", rcpts(10, "gmail.com", f"m{k}."), sender="news@club.example.org",
                 sasl="newsletter", port="submission/smtpd")
    config = Config(allow_sasl_users=("newsletter",))
    assert log.replay(tmp_path, config).decisions == []
    # without the allow list the login itself is blocked, never its address
    assert blocks(log.replay(tmp_path)) == [("sasl_user", "newsletter")]


def test_an_unauthenticated_flood_from_the_office_nat_is_still_blocked(tmp_path):
    log, rng = Log(), random.Random(7)
    for user in range(25):
        for k in range(30):
            log.smtp(T0 + k * 120 + rng.uniform(0, 100), "80.187.110.14", [f"c{user}.{k}@{rng.choice(DOMAINS)}"],
                     sasl=f"user{user}", port="submission/smtpd")
    for k in range(80):  # an infected PC behind the same NAT, straight to port 25 without AUTH
        log.smtp(T0 + 600 + k * 5, "80.187.110.14", [f"victim{k}@hanmail.net"], sender="paypal@phish.example.com")
    [block] = [d for d in log.replay(tmp_path).decisions if d.action == "block"]
    assert (block.kind, block.target, block.rule, block.count) == ("client", "80.187.110.14", "client", 60)
    assert all("sasl_username" not in line for line in block.evidence)


# --- item 3: the narrowest network that covers the abuse -------------------------------------

@pytest.mark.parametrize(("hosts", "total"), [(10, 80), (20, 200), (5, 100)])
def test_rented_hosts_in_one_24_block_the_24_not_its_16(tmp_path, hosts, total):
    log = Log()
    for i in range(total):
        log.smtp(T0 + i * 3, f"45.134.26.{10 + i % hosts}", [f"v{i}@hanmail.net"])
    assert blocks(log.replay(tmp_path)) == [("subnet", "45.134.26.0/24")]


def test_rented_hosts_in_two_24s_block_both_24s_not_their_16(tmp_path):
    log = Log()
    for i in range(200):
        log.smtp(T0 + i * 3, f"45.134.{26 + i % 2}.{10 + i % 10}", [f"v{i}@hanmail.net"])
    assert sorted(blocks(log.replay(tmp_path))) == [("subnet", "45.134.26.0/24"), ("subnet", "45.134.27.0/24")]


@pytest.mark.parametrize("rcpt_per_msg", [1, 5])
def test_an_ipv6_flood_inside_one_64_blocks_the_64_not_its_48(tmp_path, rcpt_per_msg):
    log = Log()
    for i in range(100):
        log.smtp(T0 + i * 4, f"2a01:4f8:c17:1a2b::{i + 1:x}", rcpts(rcpt_per_msg, "gmail.com", f"v{i}."))
    assert blocks(log.replay(tmp_path)) == [("subnet", "2a01:4f8:c17:1a2b::/64")]


def test_a_flood_spread_over_many_24s_blocks_the_16_within_a_minute(tmp_path):
    log, rng = Log(), random.Random(16)
    for i in range(300):  # the 2003 shape: one message every 1-2 s, a fresh address in a /16 each time
        log.smtp(T0 + i * 1.5, f"218.144.{rng.randint(100, 120)}.{rng.randint(1, 254)}", [f"s{i}@hanmail.net"],
                 sender="journeypark@hananet.net", status="deferred")
    [block] = [d for d in log.replay(tmp_path).decisions if d.action == "block"]
    assert (block.kind, block.target, block.rule) == ("subnet", "218.144.0.0/16", "wide_subnet")
    assert block.time - T0 < 60


# --- item 4: the host's own addresses --------------------------------------------------------

def list_manager(log: Log, own: str) -> None:
    """Sympa/Mailman posting through the server's own public address, without AUTH."""
    for k in range(12):
        log.smtp(T0 + k * 120, own, rcpts(50, DOMAINS[k % 4], f"member{k}."), sender="list-owner@lists.example.org",
                 name="lists.example.org")


@pytest.mark.parametrize("own", ["144.76.10.20", "2a01:4f8:c0c:1234::2"])
def test_a_list_manager_on_the_hosts_own_address_is_never_blocked(tmp_path, own):
    log = Log()
    list_manager(log, own)
    assert blocks(log.replay(tmp_path)) == [("client", own)]  # what happened before
    net = ipaddress.ip_network(own)
    assert blocks(log.replay(tmp_path, own_addresses=(net,))) == []
    assert blocks(log.replay(tmp_path, Config(own_addresses=(net,)))) == []


def test_no_subnet_around_the_hosts_own_address_is_blocked_but_its_neighbours_are(tmp_path):
    log, rng = Log(), random.Random(4)
    list_manager(log, "144.76.10.20")
    for i in range(300):  # hijacked neighbours in the same hosting /24 and /16 rotate through the relay
        log.smtp(T0 + i * 1.5, f"144.76.{10 if i % 2 else rng.randint(11, 40)}.{rng.randint(30, 250)}",
                 [f"s{i}@hanmail.net"])
    own = (ipaddress.ip_network("144.76.10.20/32"),)
    targets = [ipaddress.ip_network(t) for _, t in blocks(log.replay(tmp_path, own_addresses=own))]
    assert not any(own[0].subnet_of(t) for t in targets if t.version == 4)
    before = blocks(log.replay(tmp_path))
    assert ("subnet", "144.76.0.0/16") in before


# --- item 6: slow rotation -------------------------------------------------------------------

def slow_rotation(log: Log, interval: float, per_msg: int, hours: float, ip, seed: int = 6) -> None:
    rng = random.Random(seed)
    t, i = T0, 0
    while t < T0 + hours * 3600:
        log.smtp(t, ip(rng), rcpts(per_msg, "hanmail.net", f"s{i}."), sender="journeypark@hananet.net")
        t += interval * rng.uniform(0.8, 1.2)
        i += 1


@pytest.mark.parametrize(("interval", "per_msg", "hours"), [(150, 16, 2.5), (180, 16, 2.5), (300, 10, 8)])
def test_slow_rotation_in_a_16_is_blocked_as_the_16(tmp_path, interval, per_msg, hours):
    log = Log()
    slow_rotation(log, interval, per_msg, hours, lambda r: f"91.208.{r.randint(0, 255)}.{r.randint(1, 254)}")
    result = log.replay(tmp_path)
    [block] = [d for d in result.decisions if d.action == "block"]
    assert (block.kind, block.target, block.rule) == ("subnet", "91.208.0.0/16", "slow_wide_subnet")
    assert block.time - T0 < 2 * 3600


def test_slow_rotation_in_one_24_is_blocked_as_the_24(tmp_path):
    log = Log()
    slow_rotation(log, 200, 8, 4, lambda r: f"91.208.77.{r.randint(1, 254)}")
    assert blocks(log.replay(tmp_path)) == [("subnet", "91.208.77.0/24")]


def test_slow_ipv6_rotation_over_fresh_64s_is_blocked_as_the_48(tmp_path):
    log = Log()
    slow_rotation(log, 150, 16, 2.5, lambda r: f"2a02:26f0:d8:{r.randint(0, 0xffff):x}::{r.randint(1, 0xfff):x}")
    assert blocks(log.replay(tmp_path)) == [("subnet", "2a02:26f0:d8::/48")]


def test_a_day_of_inbound_mail_from_big_providers_and_logged_in_users_decides_nothing(tmp_path):
    log, rng = Log(), random.Random(24)
    senders = [("209.85.{}.{}", "mail-{}.google.com"), ("40.107.{}.{}", "mail-{}.outbound.protection.outlook.com"),
               ("98.137.{}.{}", "sonic{}.consmr.mail.gq1.yahoo.com")]
    for k in range(3000):  # inbound all day from hundreds of provider addresses, delivered locally
        ip_fmt, name_fmt = rng.choice(senders)
        ip = ip_fmt.format(rng.randint(0, 255), rng.randint(1, 254))
        log.local(T0 + k * 28.8, ip, [f"u{rng.randint(0, 40)}@office.example.org"], "someone@example.com",
                  name=name_fmt.format(rng.randint(1, 999)))
    for k in range(600):  # and the users' outgoing mail: office NAT and phones, authenticated
        ip = "80.187.110.14" if k % 2 else f"176.{k % 3}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        log.smtp(T0 + k * 144, ip, [f"o{k}.{j}@{rng.choice(DOMAINS)}" for j in range(rng.randint(1, 8))],
                 sender=f"user{k % 25}@office.example.org", sasl=f"user{k % 25}", port="submission/smtpd")
    result = log.replay(tmp_path)
    assert [d for d in result.decisions if d.kind in ("client", "subnet", "sasl_user")] == []
