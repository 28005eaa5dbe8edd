"""Failed sign-in attempts, counted in Redis (shared by every web process) and refused with 429
once too many: the login page and the API token endpoint (docs/permissions.md).

Counted per user name and address (``LOUPE_LOGIN_FAILURES_PER_USER``, default 10) and per
address (``LOUPE_LOGIN_FAILURES_PER_ADDRESS``, default 100) in a window of
``LOUPE_LOGIN_WINDOW_SECONDS`` (600) from the first failure; a successful sign-in clears the
user's count. Only failures count, so a team behind one address signs in freely. When Redis
cannot be reached the attempt is let through and the log says so: a broker outage must not
lock everybody out.
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.conf import settings
from django.core.cache import caches

logger = logging.getLogger(__name__)


def _address(request) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def _keys(request, username: str) -> tuple[str, str]:
    prefix = f"loupe{settings.LOUPE_QUEUE_PREFIX}:login-fail"
    who = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:24]
    where = _address(request)
    return f"{prefix}:u:{who}:{where}", f"{prefix}:a:{where}"


def _limits() -> tuple[int, int]:
    return settings.LOUPE_LOGIN_FAILURES_PER_USER, settings.LOUPE_LOGIN_FAILURES_PER_ADDRESS


def retry_after(request, username: str) -> int:
    """Seconds until this user name may try again from this address; 0 when it may now."""
    cache = caches["throttle"]
    keys = _keys(request, username)
    try:
        values = cache.get_many([*keys, *(f"{k}:since" for k in keys)])
    except Exception:  # noqa: BLE001 - fail open, loudly
        logger.warning("sign-in throttle unavailable (Redis?); attempt let through", exc_info=True)
        return 0
    for key, limit in zip(keys, _limits(), strict=True):
        if int(values.get(key) or 0) >= limit:
            since = float(values.get(f"{key}:since") or time.time())
            return max(int(since + settings.LOUPE_LOGIN_WINDOW_SECONDS - time.time()), 1)
    return 0


def failed(request, username: str) -> None:
    """Count one failed attempt."""
    cache = caches["throttle"]
    window = settings.LOUPE_LOGIN_WINDOW_SECONDS
    try:
        for key in _keys(request, username):
            # the window starts at the first failure and ends with it
            if cache.add(key, 1, timeout=window):
                cache.set(f"{key}:since", time.time(), timeout=window)
            else:
                cache.incr(key)
    except Exception:  # noqa: BLE001
        logger.warning("sign-in throttle unavailable (Redis?); failure not counted", exc_info=True)


def succeeded(request, username: str) -> None:
    """A successful sign-in clears the user's count (not the address's)."""
    try:
        user_key = _keys(request, username)[0]
        caches["throttle"].delete_many([user_key, f"{user_key}:since"])
    except Exception:  # noqa: BLE001
        logger.warning("sign-in throttle unavailable (Redis?)", exc_info=True)
