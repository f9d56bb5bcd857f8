"""OBX-11 result statuses (HL7 table 0085), read the same way by intake and feature assembly."""

from __future__ import annotations

FINAL = ("F", "C")
"""Final and corrected results: preferred when a feature has several values."""
PRELIMINARY = ("P", "R")
"""Preliminary and not-yet-verified results: used only when no final one exists."""
USABLE = frozenset(FINAL + PRELIMINARY)
REMOVING = frozenset({"W", "D"})
"""Wrong (posted to the wrong patient) and deleted: they withdraw the earlier value."""
