"""``davsync``, the reference sync client: delta transfer over the block API,
remote changes through the long-poll change feed, conflict copies, resumable
transfers. It talks HTTP only; ``storage`` is used for nothing but its chunker,
so files are cut exactly where the server cuts them.
"""
