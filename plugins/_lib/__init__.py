"""Implementations behind the built-in plugins (imported lazily by their factories)."""
