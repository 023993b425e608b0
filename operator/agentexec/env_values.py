"""How one environment variable's text becomes a setting's value (settings.py).

Each parser takes the text as given and returns the value, or raises a
ValueError whose words finish the sentence "AGENTEXEC_X ...": the caller
names the variable. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _number(value: str, kind: type[T], what: str) -> T:
    try:
        return kind(value.strip())  # type: ignore[call-arg]
    except ValueError:
        raise ValueError(f"must be {what}") from None


def seconds(value: str) -> float:
    number = _number(value, float, "a positive number of seconds")
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return number


def seconds_or_zero(value: str) -> float:
    number = _number(value, float, "a number of seconds, 0 or more")
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return number


def rate(value: str) -> float:
    number = _number(value, float, "a positive number per second")
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError("must be a positive number per second")
    return number


def positive_int(value: str) -> int:
    number = _number(value, int, "a whole number of at least 1")
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def non_negative_int(value: str) -> int:
    number = _number(value, int, "a whole number of at least 0")
    if number < 0:
        raise ValueError("must be a whole number of at least 0")
    return number


def port(value: str) -> int:
    number = _number(value, int, "a port number from 1 to 65535")
    if not 1 <= number <= 65535:
        raise ValueError("must be a port number from 1 to 65535")
    return number


def fraction(value: str) -> float:
    number = _number(value, float, "a fraction from 0 up to (not including) 1")
    if not 0 <= number < 1:
        raise ValueError("must be a fraction from 0 up to (not including) 1")
    return number


def existing_file(value: str) -> Path:
    found = Path(text(value))
    if not found.is_file():
        raise ValueError(f"file {found} does not exist")
    return found


def directory(value: str) -> Path:
    found = Path(text(value))
    if not found.is_dir():
        raise ValueError(f"directory {found} does not exist")
    return found


def path(value: str) -> Path:
    return Path(text(value))


def address(value: str) -> str:
    scheme, sep, _ = value.strip().partition("://")
    if sep:
        tls = " (TLS is TEMPORAL_TLS=true)" if scheme.lower() in ("https", "grpcs") else ""
        raise ValueError(f"must be host:port, without a scheme: drop '{scheme}://'{tls}")
    host, sep, number = text(value).rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port")
    port(number)
    return value.strip()


def namespaces(value: str) -> tuple[str, ...]:
    return tuple(sorted({part.strip() for part in value.split(",") if part.strip()}))


def queues(value: str) -> tuple[str, ...]:
    """false (none), true (any: "*"), or a comma-separated list of queue names."""
    lowered = value.strip().lower()
    if lowered in ("0", "false", "no", "off"):
        return ()
    if lowered in ("1", "true", "yes", "on", "*"):
        return ("*",)
    listed = namespaces(value)
    if not listed:
        raise ValueError("must be true, false, or a comma-separated list of task queues")
    return listed


def names(value: str) -> tuple[str, ...]:
    """A comma-separated list, in the order given, without repeats."""
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def install(value: str) -> str:
    # It prefixes task queue names and worker identities: no separators of
    # those (":" and "/"), no spaces.
    name = text(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}", name):
        raise ValueError(
            "must be 1 to 151 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def whole_seconds(value: str) -> float:
    # Temporal keeps activity timeouts in whole seconds in our workflow input.
    number = seconds(value)
    if number < 1:
        raise ValueError("must be at least 1 second")
    return float(int(number))


def ttl(value: str) -> int | None:
    if value.strip().lower() == "never":
        return None
    try:
        return non_negative_int(value)
    except ValueError:
        raise ValueError("must be a whole number of seconds (0: at once) or never") from None


def proxy_url(value: str) -> str:
    url = text(value)
    if "://" not in url:
        url = f"http://{url}"  # as curl reads "proxy:3128"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (validates it)
    except ValueError:
        raise ValueError("must be a proxy URL, http://host:port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be a proxy URL, http://host:port")
    return url


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value.strip()

    return parse
