"""Token budgets (issue #22), pure: an execution's own limit, and a
namespace's budget per period (ExecutionPolicy spec.budget)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def token_limit(spec: object) -> int | None:
    """``spec.limits.maxTokens`` of an execution's spec, or None (no limit)."""
    limits = spec.get("limits") if isinstance(spec, Mapping) else None
    value: Any = limits.get("maxTokens") if isinstance(limits, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
