"""Lists of a project's data served from memory until that data changes (docs/benchmarks.md,
"API under load").

The grid, the review queue and an image's labels are the requests a team sends most, and each
built 50 rows from the ORM every time (8-13 ms of CPU on a 2-core server). A list page is now
kept, as the bytes sent, in the web process that built it, under the project's **data token**:
a random string in Redis that every write to the project's data replaces. The next request for
the same page with the same token is answered from memory; after a write, the token differs and
the page is built again.

Who replaces a project's token, for every way the ORM writes (one owner: this module):

* :class:`WatchedModel` (a mixin of every model whose rows a cached list shows: images, labels,
  suggestions, reviews, categories, model versions, runs, heatmaps, members, the project) in
  ``save()`` and ``delete()``;
* :class:`WatchedQuerySet` (their managers' querysets) in ``update()`` (``bulk_update()``
  goes through it), ``bulk_create()`` and ``delete()``; rows deleted by a cascade belong to
  the deleted row's project, which that delete already marks;
* a user's save or delete (a list shows usernames) replaces a token every project's pages
  carry.

A write inside a transaction replaces the token at once and again when the transaction
commits, so a page built from the data before the commit is not served after it. A page is not
kept when it was built inside a transaction (its rows could be rolled back), except a test
case's own. A page answers only the same user, URL (with its host and query), content type
and database. Pages live at most :data:`MAX_AGE` seconds and the store is bounded
(:data:`MAX_PAGES`, :data:`MAX_BYTES`). When Redis does not answer, nothing is cached for a few
seconds and this process's pages are dropped; a token that could not be replaced is replaced at
the next chance.

``LOUPE_LIST_CACHE=false`` switches it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.http import HttpResponse

logger = logging.getLogger(__name__)

#: Seconds a page is kept at most (what a token that could not be replaced can cost).
MAX_AGE = 60.0
#: Pages and bytes kept per process, the oldest dropped first.
MAX_PAGES = 2000
MAX_BYTES = 64 * 1024 * 1024
#: Seconds without Redis after it failed once (no 1-second timeout per request meanwhile).
PAUSE_AFTER_FAILURE = 5.0

_EVERY_PROJECT = "all"


def enabled() -> bool:
    return getattr(settings, "LOUPE_LIST_CACHE", True)


# --- the tokens, in Redis ---------------------------------------------------------------------


class _Tokens:
    """Project tokens in Redis, shared by web processes and workers."""

    def __init__(self) -> None:
        self._client = None
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._unsent: set[str] = set()  # keys whose replacement failed: replaced at next chance

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5
            )
        return self._client

    @staticmethod
    def key(project: int | str, alias: str = DEFAULT_DB_ALIAS) -> str:
        return f"loupe:lists:{connections[alias].settings_dict['NAME']}:{project}"

    def _failed(self, error: Exception) -> None:
        logger.warning("list cache: Redis did not answer (%s); lists are built for now", error)
        self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
        PAGES.clear()

    def replace(self, keys: Iterable[str]) -> None:
        """New tokens for ``keys`` (a project's and the one every project carries)."""
        with self._lock:
            todo = set(keys) | self._unsent
            self._unsent = set()
        if not todo:
            return
        if time.monotonic() < self._paused_until:  # sent once the pause is over
            with self._lock:
                self._unsent |= todo
            return
        try:
            pipe = self._redis().pipeline(transaction=False)
            for key in todo:
                pipe.set(key, os.urandom(8).hex())
            pipe.execute()
        except Exception as error:  # noqa: BLE001 - any Redis failure: retry later, drop pages
            with self._lock:
                self._unsent |= todo
            self._failed(error)

    def current(self, keys: list[str]) -> tuple[str, ...] | None:
        """The tokens of ``keys`` (made where there is none yet), or None without Redis."""
        if time.monotonic() < self._paused_until:
            return None
        if self._unsent:
            self.replace(())
            if self._unsent:
                return None
        try:
            values = self._redis().mget(keys)
            if None in values:
                pipe = self._redis().pipeline(transaction=False)
                for key, value in zip(keys, values, strict=True):
                    if value is None:
                        pipe.set(key, os.urandom(8).hex(), nx=True)
                pipe.execute()
                values = self._redis().mget(keys)
        except Exception as error:  # noqa: BLE001
            self._failed(error)
            return None
        if None in values:
            return None
        return tuple(v.decode() for v in values)


TOKENS = _Tokens()


# --- the pages, in this process ---------------------------------------------------------------


class _Pages:
    """Rendered pages by key, bounded in count, bytes and age (least recently used first out)."""

    def __init__(self) -> None:
        self._pages: OrderedDict[tuple, tuple[float, bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self._lock:
            entry = self._pages.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > MAX_AGE:
                self._drop(key)
                return None
            self._pages.move_to_end(key)
            return entry[1], entry[2]

    def put(self, key: tuple, content: bytes, content_type: str) -> None:
        if len(content) > MAX_BYTES // 16:
            return
        with self._lock:
            if key in self._pages:
                self._drop(key)
            self._pages[key] = (time.monotonic(), content, content_type)
            self._bytes += len(content)
            while len(self._pages) > MAX_PAGES or self._bytes > MAX_BYTES:
                self._drop(next(iter(self._pages)))

    def _drop(self, key: tuple) -> None:
        self._bytes -= len(self._pages.pop(key)[1])

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._pages)


PAGES = _Pages()


def _in_transaction(alias: str) -> bool:
    """Inside a transaction other than a test case's own (whose reads no one else shares)."""
    conn = connections[alias]
    if not conn.in_atomic_block:
        return False
    return not all(getattr(block, "_from_testcase", False) for block in conn.atomic_blocks)


def cached_page(request, project_id: int, build: Callable[[], object]):
    """``build()``'s response for ``request``, or the same bytes from memory when the project's
    data has not changed since a response to the same request of the same user was built here.
    The caller checks the permission first, every time."""
    alias = DEFAULT_DB_ALIAS
    renderer = getattr(request, "accepted_renderer", None)
    if (
        not enabled()
        or request.method != "GET"
        or getattr(renderer, "format", None) != "json"
        or _in_transaction(alias)
    ):
        return build()
    tokens = TOKENS.current([TOKENS.key(project_id, alias), TOKENS.key(_EVERY_PROJECT, alias)])
    if tokens is None:
        return build()
    key = (
        connections[alias].settings_dict["NAME"],
        project_id,
        tokens,
        # per user: a list may depend on who asks (the grid's "with labels sent back to me")
        getattr(request.user, "pk", None),
        request.build_absolute_uri(),
        request.accepted_media_type,
    )
    hit = PAGES.get(key)
    if hit is not None:
        response = HttpResponse(hit[0], content_type=hit[1])
        response["X-Loupe-List-Cache"] = "hit"
        return response
    response = build()

    def keep(rendered):
        if rendered.status_code == 200:
            PAGES.put(key, rendered.content, rendered["Content-Type"])

    response.add_post_render_callback(keep)
    return response


# --- who replaces tokens ----------------------------------------------------------------------


def changed(project_ids: Iterable[int | None], *, every_project: bool = False) -> None:
    """The data of these projects changed (or, ``every_project``, something every project's
    lists show): new tokens now, and again when the surrounding transaction commits."""
    if not enabled():
        return
    keys = {TOKENS.key(p) for p in project_ids if p is not None}
    if every_project:
        keys.add(TOKENS.key(_EVERY_PROJECT))
    if not keys:
        return
    TOKENS.replace(keys)
    if connections[DEFAULT_DB_ALIAS].in_atomic_block:
        transaction.on_commit(lambda: TOKENS.replace(keys))


def _project_ids_of_rows(model, path: str, rows: list) -> set:
    """The project ids of unsaved or deleted ``rows`` of ``model`` (``path``: from the row to
    the project id, ``project_id`` or ``image__project_id``), with one query at most."""
    parts = path.split("__")
    if len(parts) == 1:
        return {getattr(r, parts[0]) for r in rows}
    field = model._meta.get_field(parts[0])
    found, missing = set(), set()
    for r in rows:
        if field.is_cached(r):
            related = getattr(r, parts[0])
            found.add(None if related is None else _walk(related, parts[1:]))
        else:
            missing.add(getattr(r, field.attname))
    missing.discard(None)
    if missing:
        found |= set(
            field.related_model._base_manager.filter(pk__in=missing).values_list(
                "__".join(parts[1:]), flat=True
            )
        )
    return found


def _walk(obj, parts: list[str]):
    for part in parts[:-1]:
        obj = getattr(obj, part)
        if obj is None:
            return None
    return getattr(obj, parts[-1])


class WatchedQuerySet(models.QuerySet):
    """A queryset whose bulk writes replace the tokens of the projects they touch."""

    def _projects(self) -> set:
        path = self.model.LIST_CACHE_PROJECT
        return set(self.order_by().values_list(path, flat=True).distinct())

    def update(self, **kwargs):
        if not enabled():
            return super().update(**kwargs)
        projects = self._projects()
        done = super().update(**kwargs)
        changed(projects)
        return done

    def delete(self):
        if not enabled():
            return super().delete()
        projects = self._projects()
        done = super().delete()
        changed(projects)
        return done

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        made = super().bulk_create(objs, *args, **kwargs)
        if enabled() and objs:
            changed(_project_ids_of_rows(self.model, self.model.LIST_CACHE_PROJECT, objs))
        return made


class WatchedModel(models.Model):
    """A model whose rows cached lists show. ``LIST_CACHE_PROJECT``: the path from a row to
    its project's id. Its manager must be ``WatchedQuerySet.as_manager()``."""

    LIST_CACHE_PROJECT = "project_id"

    objects = WatchedQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        if enabled():
            changed(self._list_cache_projects())

    def delete(self, *args, **kwargs):
        if not enabled():
            return super().delete(*args, **kwargs)
        projects = self._list_cache_projects()
        done = super().delete(*args, **kwargs)
        changed(projects)
        return done

    def _list_cache_projects(self) -> set:
        return _project_ids_of_rows(type(self), self.LIST_CACHE_PROJECT, [self])


def _user_changed(sender, **kwargs) -> None:
    changed((), every_project=True)


def connect_user_signals() -> None:
    """A user's save or delete changes every list that shows usernames (called once, from the
    app's ``ready()``)."""
    from django.contrib.auth import get_user_model
    from django.db.models.signals import post_delete, post_save

    user = get_user_model()
    post_save.connect(_user_changed, sender=user, dispatch_uid="loupe-list-cache-user-save")
    post_delete.connect(_user_changed, sender=user, dispatch_uid="loupe-list-cache-user-delete")
