"""The state database and the checks on the files it trusts.

base.StateStore is what the rest of relaywatch uses; sqlite.Store implements it (sqlite_file: the
file, its schema and lock); state: typed records over a key/value table; records: their values.
"""
