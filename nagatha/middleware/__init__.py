"""Dramatiq middleware of the hub, one per file."""
