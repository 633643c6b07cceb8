"""The extension API for smart sync clients (and the reference client, davsync)."""
