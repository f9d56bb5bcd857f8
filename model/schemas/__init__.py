"""Shipped clinical feature schemas (YAML)."""
