"""Telling the admin: the wording of notices (pure) and their delivery through Apprise."""
