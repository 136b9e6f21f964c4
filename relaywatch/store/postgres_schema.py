"""The fleet's tables in PostgreSQL, and what each statement the store runs says (no driver here).

Every host's own rows carry its name (`host`): counts, its read positions, its open messages,
the origins of its queued mail and its small state records. Decisions, blocks and offences are
the fleet's. A host's writes are numbered: each write transaction takes the next `seq` from its
row in `relaywatch_hosts` (a row lock, so a host's numbers follow its commit order), and the
counts and decisions it writes carry that number; another host pulls what is new by remembering,
per host, the last number it read. `relaywatch_claims` makes a decision unique across the fleet:
the first host whose (action, kind, target) claim lands records it; a claim still in force wins.

The schema is a contract with every database an earlier relaywatch wrote: tables and columns are
added, never changed; `relaywatch_schema` holds the version, and a newer one is refused.
"""

from __future__ import annotations

from relaywatch.core.blocks_table import CHANNEL, DDL, TABLE

VERSION = 2  # 2: relaywatch_decisions.hosts
LOCK_KEY = 0x52574442  # pg_advisory_xact_lock while the schema is made: hosts starting together wait in turn

# relaywatch_blocks is core.blocks_table's: the contract with Postfix's pgsql: queries.
SCHEMA = DDL + """
CREATE TABLE IF NOT EXISTS relaywatch_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS relaywatch_hosts (
  host text PRIMARY KEY, seq bigint NOT NULL DEFAULT 0, last_contact double precision,
  lag_s double precision, position text);
CREATE TABLE IF NOT EXISTS relaywatch_counts (
  host text NOT NULL, seq bigint NOT NULL, dim text NOT NULL, bucket bigint NOT NULL, key text NOT NULL,
  n integer NOT NULL);
CREATE INDEX IF NOT EXISTS relaywatch_counts_pull ON relaywatch_counts (host, seq);
CREATE INDEX IF NOT EXISTS relaywatch_counts_bucket ON relaywatch_counts (bucket);
CREATE TABLE IF NOT EXISTS relaywatch_decisions (
  id bigserial PRIMARY KEY, host text NOT NULL, seq bigint NOT NULL, time double precision NOT NULL,
  action text NOT NULL, kind text NOT NULL, target text NOT NULL, rule text NOT NULL, count integer NOT NULL,
  window_s integer NOT NULL, clients integer NOT NULL, evidence text NOT NULL, sample_qids text NOT NULL,
  hosts text NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS relaywatch_decisions_time ON relaywatch_decisions (time);
CREATE INDEX IF NOT EXISTS relaywatch_decisions_pull ON relaywatch_decisions (host, seq);
CREATE TABLE IF NOT EXISTS relaywatch_claims (
  action text NOT NULL, kind text NOT NULL, target text NOT NULL, time double precision NOT NULL,
  until double precision NOT NULL, host text NOT NULL,
  PRIMARY KEY (action, kind, target));
CREATE TABLE IF NOT EXISTS relaywatch_offences (
  kind text NOT NULL, target text NOT NULL, count integer NOT NULL, last double precision NOT NULL,
  PRIMARY KEY (kind, target));
CREATE TABLE IF NOT EXISTS relaywatch_positions (
  host text NOT NULL, source text NOT NULL, value text NOT NULL, PRIMARY KEY (host, source));
CREATE TABLE IF NOT EXISTS relaywatch_meta (
  host text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (host, key));
CREATE TABLE IF NOT EXISTS relaywatch_origins (
  host text NOT NULL, qid text NOT NULL, client text, sasl_user text, time double precision NOT NULL,
  PRIMARY KEY (host, qid));
CREATE INDEX IF NOT EXISTS relaywatch_origins_client ON relaywatch_origins (host, client);
CREATE TABLE IF NOT EXISTS relaywatch_open_messages (
  host text NOT NULL, qid text NOT NULL, first_seen double precision NOT NULL, last_seen double precision NOT NULL,
  client text, sasl_user text, sender text NOT NULL, nrcpt integer NOT NULL, seen text NOT NULL,
  PRIMARY KEY (host, qid));
"""
# What an older schema lacks, added when a newer relaywatch first opens it (its hosts may still run:
# every added column has a default).
UPGRADE = "ALTER TABLE relaywatch_decisions ADD COLUMN IF NOT EXISTS hosts text NOT NULL DEFAULT '[]';"

NEXT_SEQ = ("INSERT INTO relaywatch_hosts (host, seq) VALUES (%s, 1) "
            "ON CONFLICT (host) DO UPDATE SET seq = relaywatch_hosts.seq + 1 RETURNING seq")
CLAIM = ("INSERT INTO relaywatch_claims AS c (action, kind, target, time, until, host) VALUES (%s, %s, %s, %s, %s, %s)"
         " ON CONFLICT (action, kind, target) DO UPDATE SET time = excluded.time, until = excluded.until,"
         " host = excluded.host WHERE c.until <= excluded.time RETURNING host")
INSERT_DECISION = (
    "INSERT INTO relaywatch_decisions (host, seq, time, action, kind, target, rule, count, window_s, clients,"
    " evidence, sample_qids, hosts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
DECISION_COLUMNS = "time, action, kind, target, rule, count, window_s, clients, evidence, sample_qids, hosts"
# The fleet hosts whose counts of a decision's target are in its window (asked only when a decision is
# won): a subnet's are its clients' (client keys are addresses, as relaywatch_origins' are).
CONTRIBUTORS = ("SELECT DISTINCT host FROM relaywatch_counts WHERE bucket >= %(bucket)s AND dim = ANY(%(dims)s)"
                " AND (key = %(target)s OR (%(subnet)s AND key::inet <<= %(target)s::cidr))")
HOST_SEQ = "SELECT seq FROM relaywatch_hosts WHERE host = %s"
COPY_COUNTS = "COPY relaywatch_counts (host, seq, dim, bucket, key, n) FROM STDIN"
UPSERT_MESSAGE = (
    "INSERT INTO relaywatch_open_messages VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (host, qid) DO"
    " UPDATE SET first_seen = excluded.first_seen, last_seen = excluded.last_seen, client = excluded.client,"
    " sasl_user = excluded.sasl_user, sender = excluded.sender, nrcpt = excluded.nrcpt, seen = excluded.seen")
UPSERT_ORIGIN = ("INSERT INTO relaywatch_origins VALUES (%s, %s, %s, %s, %s) ON CONFLICT (host, qid) DO UPDATE SET"
                 " client = excluded.client, sasl_user = excluded.sasl_user, time = excluded.time")
UPSERT_POSITION = ("INSERT INTO relaywatch_positions (host, source, value) VALUES (%s, %s, %s)"
                   " ON CONFLICT (host, source) DO UPDATE SET value = excluded.value")
HOST_POSITION = ("INSERT INTO relaywatch_hosts AS h (host, last_contact, position) VALUES"
                 " (%s, extract(epoch FROM now()), %s) ON CONFLICT (host) DO UPDATE SET"
                 " last_contact = excluded.last_contact, position = excluded.position")
HOST_STATUS = ("INSERT INTO relaywatch_hosts AS h (host, last_contact, lag_s) VALUES"
               " (%s, extract(epoch FROM now()), %s) ON CONFLICT (host) DO UPDATE SET"
               " last_contact = excluded.last_contact, lag_s = excluded.lag_s")
UPSERT_META = ("INSERT INTO relaywatch_meta (host, key, value) VALUES (%s, %s, %s)"
               " ON CONFLICT (host, key) DO UPDATE SET value = excluded.value")
# A block replaces an earlier one of the same target (a manual block, an expired one); `keep_active`:
# written after an outage, it leaves one in force that another host recorded meanwhile.
UPSERT_BLOCK = (
    f"INSERT INTO {TABLE} AS b (kind, target, lookup_key, action, reason, rule, since, until, offences, host)"
    " VALUES (%(kind)s, %(target)s, %(key)s, %(action)s, %(reason)s, %(rule)s, %(since)s, %(until)s,"
    " COALESCE((SELECT count FROM relaywatch_offences WHERE kind = %(kind)s AND target = %(target)s), 0) + 1,"
    " %(host)s) ON CONFLICT (kind, target) DO UPDATE SET lookup_key = excluded.lookup_key, action = excluded.action,"
    " reason = excluded.reason, rule = excluded.rule, since = excluded.since, until = excluded.until,"
    " offences = excluded.offences, host = excluded.host"
    " WHERE NOT %(keep_active)s OR (b.until IS NOT NULL AND b.until <= excluded.since) RETURNING kind")
COUNT_OFFENCE = ("INSERT INTO relaywatch_offences (kind, target, count, last) VALUES (%s, %s, 1, %s)"
                 " ON CONFLICT (kind, target) DO UPDATE SET count = relaywatch_offences.count + 1,"
                 " last = excluded.last")
SELECT_BLOCKS = ("SELECT b.kind, b.target, b.reason, b.rule, b.since, b.until, COALESCE(o.count, b.offences)"
                 f" FROM {TABLE} b LEFT JOIN relaywatch_offences o"
                 " ON o.kind = b.kind AND o.target = b.target")
NOTIFY = f"SELECT pg_notify('{CHANNEL}', %s)"
LISTEN = f"LISTEN {CHANNEL}"

# The fleet's sum of counts from a bucket on: this host's rows all, another host's up to the number
# this store has pulled (`cursor`): what comes later arrives through the pull, never twice.
_UPTO = ("FROM relaywatch_counts c LEFT JOIN unnest(%(hosts)s::text[], %(seqs)s::bigint[]) AS k(host, hi)"
         " ON k.host = c.host WHERE c.bucket >= %(bucket)s AND (c.host = %(me)s OR c.seq <= COALESCE(k.hi, 0))")
FLEET_SUM = ("SELECT c.dim, c.bucket, c.key, sum(c.n)::bigint " + _UPTO +
             " GROUP BY c.dim, c.bucket, c.key ORDER BY c.dim, c.bucket, c.key")
FLEET_DIMS = "SELECT c.dim, count(DISTINCT c.key) " + _UPTO + " GROUP BY c.dim"
FLEET_TOP = ("WITH t AS (SELECT c.dim, c.bucket, c.key, c.n " + _UPTO + " AND c.dim = %(dim)s),"
             " top AS (SELECT key FROM t GROUP BY key ORDER BY sum(n) DESC, max(bucket) DESC LIMIT %(max)s)"
             " SELECT dim, bucket, key, sum(n)::bigint FROM t WHERE key IN (SELECT key FROM top)"
             " GROUP BY dim, bucket, key ORDER BY bucket, key")
BUSIEST = ("SELECT dim, key, sum(n)::bigint AS total FROM relaywatch_counts WHERE bucket >= %s GROUP BY dim, key"
           " ORDER BY dim, total DESC, key")
# What other hosts wrote after the numbers pulled so far, up to the numbers their rows showed.
_NEW = (" JOIN unnest(%(hosts)s::text[], %(lo)s::bigint[], %(hi)s::bigint[]) AS k(host, lo, hi)"
        " ON k.host = x.host AND x.seq > k.lo AND x.seq <= k.hi")
PULL_COUNTS = ("SELECT x.dim, x.bucket, x.key, sum(x.n)::bigint FROM relaywatch_counts x" + _NEW +
               " WHERE x.bucket >= %(bucket)s GROUP BY x.dim, x.bucket, x.key ORDER BY x.bucket")
PULL_DECISIONS = "SELECT x.host, " + DECISION_COLUMNS + " FROM relaywatch_decisions x" + _NEW + " ORDER BY x.id"
