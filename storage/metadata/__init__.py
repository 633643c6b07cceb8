"""Metadata in SQL: schema, engine set-up and migrations."""
