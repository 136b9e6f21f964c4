"""The relaywatch_blocks table: the contract between the PostgreSQL store, which writes a row per
block, and Postfix's pgsql: lookup tables, which read it (TEAM3's fixed schema and queries).

Here, below both edges, because store/ and postfix/ may not import each other: the store creates
the table from `DDL`, relaywatch/postfix/pgsql_maps.py puts the queries in Postfix's .cf files.
`lookup_key` is what Postfix asks for (mapkeys.render_key(kind, target, "hash")), `action` what it
gets back (access(5): `REJECT text`); the query's `until` clause makes an expired block stop
matching at once, before relaywatch's expiry deletes the row.
"""

from __future__ import annotations

TABLE = "relaywatch_blocks"
CHANNEL = "relaywatch_blocks"  # NOTIFY relaywatch_blocks, in the transaction that changes a block
READ_ROLE = "relaywatch_postfix"  # the role Postfix logs in as: SELECT on TABLE, nothing else

DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " kind text NOT NULL,"  # client | subnet | sasl_user
    " target text NOT NULL,"  # 218.144.0.0/16, 218.144.1.2, user@example.com
    " lookup_key text NOT NULL,"  # what Postfix asks for: 218.144, 2001:db8:1:2
    " action text NOT NULL,"  # the access(5) result: 'REJECT ' || mapkeys.reject_text(reason)
    " reason text NOT NULL, rule text NOT NULL,"
    " since double precision NOT NULL, until double precision,"  # epoch s, NULL = permanent
    " offences integer NOT NULL DEFAULT 1, host text NOT NULL,"  # host: the fleet member that decided it
    " PRIMARY KEY (kind, target));"
    f" CREATE INDEX IF NOT EXISTS {TABLE}_lookup ON {TABLE} (lookup_key);"
)

_LIVE = "(until IS NULL OR until > extract(epoch FROM now()))"
# Postfix replaces %s with the SQL-quoted key it asks for (access(5): 218.144.1.2, then 218.144.1, 218.144).
QUERY_CLIENTS = (f"SELECT action FROM {TABLE} WHERE lookup_key = '%s' AND kind IN ('client','subnet') "
                 f"AND {_LIVE} LIMIT 1")
QUERY_SASL = f"SELECT action FROM {TABLE} WHERE lookup_key = '%s' AND kind = 'sasl_user' AND {_LIVE} LIMIT 1"
