"""Postfix at the edge: postconf, access maps, the queue, the configuration audit."""
