"""Which URLs walbridge sends a token or data to: the settings check and the Salesforce client share it."""

from __future__ import annotations

import httpx

__all__ = ["insecure_url"]


def insecure_url(url: str) -> bool:
    """True for a URL a token or data call must not use: plain http to anything but this machine."""
    parsed = httpx.URL(url)
    if parsed.scheme == "https":
        return False
    host = parsed.host
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return not (parsed.scheme == "http" and loopback)
