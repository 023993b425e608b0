"""Lines tests want in the run's closing summary (e.g. the chaos counts)."""

from __future__ import annotations

SUMMARY: list[str] = []
