"""The WebDAV face: a WsgiDAV provider over the storage facade."""
