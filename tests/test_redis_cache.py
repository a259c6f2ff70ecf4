"""The cache's Redis connections are kept per process (``core.cache.RedisCache``): Django makes a
cache instance per thread and per request context, and each used to open its own connection."""

from __future__ import annotations

import contextvars
import threading

import pytest
from django.core.cache import caches

from core.cache import RedisCache

pytestmark = pytest.mark.redis


def test_the_project_uses_the_shared_pool_cache_with_redis():
    assert isinstance(caches["default"], RedisCache)


def test_instances_made_for_each_request_and_thread_share_the_connections(monkeypatch):
    from redis.connection import Connection

    caches["default"].set("warm-up", 1)  # the process's pool and its first connection
    connects = []
    open_socket = Connection._connect

    def counted(self):  # type: ignore[no-untyped-def]
        connects.append(self)
        return open_socket(self)

    monkeypatch.setattr(Connection, "_connect", counted)
    instances = []

    def request(n: int) -> None:  # what each request does: a fresh context, its own cache instance
        cache = caches["default"]
        instances.append(cache)
        cache.set(f"request-{n}", n)
        assert cache.get(f"request-{n}") == n

    for n in range(5):
        contextvars.Context().run(request, n)
    thread = threading.Thread(target=request, args=(5,))
    thread.start()
    thread.join()

    assert len({id(cache) for cache in instances}) == 6  # Django's: one per context and thread
    assert connects == []  # the connection opened before serves them all (six before)


def test_caches_with_another_pool_class_do_not_share_a_pool(settings):
    from redis.connection import BlockingConnectionPool, ConnectionPool

    location = settings.CACHES["default"]["LOCATION"]
    plain = RedisCache(location, {})
    blocking = RedisCache(location, {"OPTIONS": {"pool_class": BlockingConnectionPool}})
    pools = [cache._cache._get_connection_pool(write=True) for cache in (plain, blocking)]
    assert type(pools[0]) is ConnectionPool
    assert type(pools[1]) is BlockingConnectionPool  # the same server and options but the class
    assert RedisCache(location, {})._cache._get_connection_pool(write=True) is pools[0]
