"""How state-before-issue14.db was made: a state database written by relaywatch as of commit 43004a5
(before the typed store), with every table and every meta key the daemon writes.

    git archive 43004a5 relaywatch | tar -x -C OLD
    PYTHONPATH=OLD python tests/data/state-before-issue14.py state-before-issue14.db
"""
import sqlite3
import sys

from relaywatch.model import Decision
from relaywatch.store.sqlite import BlockRow, Store

path = sys.argv[1]
s = Store(path)
s.commit_batch([("client", 100, "198.18.7.9", 3), ("sender", 100, "a@example.org", 2)],
               [Decision(1000.0, "block", "client", "198.18.7.9", "client_burst", 30, 600, 1, ("e1",), ("4XyZ1",))],
               ("file:/var/log/mail.log", {"inode": 7, "offset": 1234, "head": "ab12"}),
               ([("mx1/4XyZ1", 990.0, 995.0, "198.18.7.9", None, "a@example.org", 2, ("b@example.net",))], []),
               ([("4XyZ1", "198.18.7.9", None, 990.0), ("4XyZ2", "198.18.8.1", "alice", 991.0)], []))
s.add_block(BlockRow("client", "198.18.7.9", "30 in 600 s", "client_burst", 1000.0, 4600.0))
s.add_block(BlockRow("sasl_user", "alice", "manual", "manual", 1001.0, None))
s.set_meta("daemon", {"pid": None, "started": 900.0, "heartbeat": 1005.0, "source": "file:/var/log/mail.log",
                      "source_note": "", "caught_up": True, "last_line_at": 1004.0, "lines": 50, "unparsed": 1,
                      "failed_lines": 0, "relayed": 12, "last_log_time": 1003.0,
                      "notify": {"sent": 1, "failed": 0, "dropped": 0, "pending": 0, "last_error": None,
                                 "last_success": 1002.0}, "policy": None, "stopped": 1006.0})
s.set_meta("map_pending", {"since": 1000.0, "error": "postmap failed", "state": "not written",
                           "fault": "NOT_WRITTEN:PostfixError:", "retry_in_s": 5})
s.set_meta("notify_state", {"cooldown": {"block client": 1000.0}, "sent_keys": ["audit:x"]})
s.set_meta("enforcement_alarms", {"client 198.18.7.9": {"kind": "client", "target": "198.18.7.9", "since": 1000.0,
           "first": 1001.0, "last": 1002.0, "messages": 2, "sample_qids": ["4XyZ3", "4XyZ4"]}})
s.set_meta("day:2024-05-13", {"day": "2024-05-13", "relayed": 10})
s.set_meta("day:2024-05-14", {"day": "2024-05-14", "relayed": 11})
s.set_meta("day_current", {"day": "2024-05-15", "relayed": 3})
s.set_meta("digest_sent", "2024-05-14")
s.close()
conn = sqlite3.connect(path)
print("\n".join(conn.iterdump()))
