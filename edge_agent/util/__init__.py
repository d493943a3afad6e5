"""Small helpers every package needs once: timestamps, file hashing and durable appends, URL redaction.

Each lives here exactly once, so a fix (a rounding rule, an fsync) lands everywhere at once.
This package imports nothing from the rest of ``edge_agent``.
"""
