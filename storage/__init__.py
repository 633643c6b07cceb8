"""Block-chunked, deduplicated, compressed and encrypted file storage.

Nothing here knows about HTTP, WebDAV or the command line. The faces use
:class:`storage.engine.Engine` (accounts, maintenance) and
:class:`storage.volume.Volume` (one account's file tree) and nothing below them.
"""
