"""The process-wide served policy, and hot swap.

``get_policy()`` returns the policy this process serves. At most every ``SERVING_LIVE_CHECK_SECONDS``
it asks the database which policy version is live (one indexed query); when that changed, it loads
the new version in a worker thread while the old one keeps answering, then swaps. A version that
fails to load is not retried until it is deployed again (a new ``deployed_at``): the process keeps
serving what it had, the reason goes to the version's ``load_error``, the log and
``rlhf_model_load_failures_total``. Every server process does this on its own, so a deploy reaches
all of them within the check interval, without a restart.

``get_policy_for(version_id)`` serves one given version (a canary's arm): the live policy when it is
that version, else the version loaded once and kept beside it (the last ``_OTHERS_KEPT`` such
versions). A version that fails to load is not tried again for ``_RETRY_FAILED_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError

from core.asyncdb import db_async
from models_registry import selectors, services
from models_registry.models import ModelVersion
from models_registry.serving.base import ServedPolicy, reset_slots
from models_registry.serving.errors import ServingError
from models_registry.serving.metrics import MODEL_LOAD_FAILURES, SERVING_LIVE_VERSION

logger = logging.getLogger(__name__)

_POLICY = ModelVersion.Kind.POLICY
_NO_POLICY = "No policy model is live yet; an operator must deploy one."


@dataclass
class _Served:
    policy: ServedPolicy | None = None
    checked_at: float = float("-inf")
    # (version id, deployed_at) -> the error its load raised, so a broken version is tried once per deploy.
    failed: dict[tuple[int, object], ServingError] = field(default_factory=dict)


_served = _Served()
# Loads happen in worker threads; this makes concurrent loads of one version (from several event
# loops or threads) wait for the first instead of loading the model twice.
_load_lock = threading.Lock()
_loaded: ServedPolicy | None = None
# One asyncio lock per event loop, so that one coroutine checks and loads while the others wait.
_check_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _fresh(now: float) -> bool:
    return _served.policy is not None and now - _served.checked_at < settings.SERVING_LIVE_CHECK_SECONDS


def served_policy() -> ServedPolicy | None:
    """The policy this process serves now, as it is: no check, no load (None before the first load)."""
    return _served.policy


async def get_policy() -> ServedPolicy:
    """The policy to answer with: the live policy version, loaded on first use and shared.

    Raises ``ServingError`` when no policy version is live or the live one cannot be loaded (and no
    earlier version is loaded to fall back on)."""
    if _fresh(time.monotonic()):
        assert _served.policy is not None
        return _served.policy
    loop = asyncio.get_running_loop()
    lock = _check_locks.setdefault(loop, asyncio.Lock())
    if lock.locked() and _served.policy is not None:
        # Another request is checking, or loading a new version (seconds): answer with the current one.
        return _served.policy
    async with lock:
        if _fresh(time.monotonic()):
            assert _served.policy is not None
            return _served.policy
        return await _refresh()


async def preload(*, timeout: float) -> ServedPolicy | None:
    """Load and warm the live policy before this process takes its first chat (``WEB_WARM_UP_SECONDS``,
    ``rlhf_site.lifespan``), so the first users do not wait for the model to load. Never raises: with
    no live policy, the registry unreachable or a load that fails, the process starts anyway and
    ``get_policy`` tries again on the first chat; past ``timeout`` the load goes on in its thread
    and the process starts meanwhile (a warm-up cut short is the first chat's to finish). A running
    canary's version is loaded and warmed next, within the same ``timeout`` (``_preload_canary``).
    Returns the live policy, or None."""
    limit = asyncio.timeout(timeout)
    policy: ServedPolicy | None = None
    loading = "the live policy"
    try:
        async with limit:
            policy = await get_policy()
            try:
                await policy.warm()
            except Exception:  # loaded all the same: the first chat warms what is left
                logger.exception("%s is loaded but warming it failed; this process starts with it", policy.label)
            loading = "the canary's version"
            await _preload_canary(live=policy)
    except ServingError as exc:
        logger.info("no policy preloaded: %s", exc.message)
    except TimeoutError:
        if not limit.expired():  # a timeout inside the load (a socket's), not this one
            logger.exception("preloading the live policy failed; this process starts without it")
        else:
            logger.warning("%s is still loading or warming after %s s; starting meanwhile", loading, timeout)
    except Exception:
        logger.exception("preloading the live policy failed; this process starts without it")
    return policy


async def _preload_canary(*, live: ServedPolicy) -> None:
    """The running policy canary's version too, if another than ``live``: its conversations' first
    answers would otherwise wait for it to load. A failure is logged (and stored on the version, by
    ``get_policy_for``); its conversations are answered by the live version meanwhile."""
    try:
        canary = await db_async(selectors.running_canary_row)(_POLICY)
        if canary is None or canary.version_id == live.version_id:
            return
        arm = await get_policy_for(canary.version_id)
        await arm.warm()
    except ServingError as exc:
        logger.warning("the canary's version was not preloaded: %s", exc.message)
    except Exception:  # a warm-up: the first answer routed to it tries again
        logger.exception("preloading the canary's version failed; its first answer loads it")


async def _refresh() -> ServedPolicy:
    current = _served.policy
    try:
        key = await db_async(selectors.live_version_key)(_POLICY)
        version = None
        if key is not None and (current is None or current.version_id != key[0]) and key not in _served.failed:
            version = await db_async(ModelVersion.objects.filter(id=key[0]).first)()
    except DatabaseError as exc:
        if current is None:
            raise ServingError("The model registry is unavailable.", code="registry_unavailable") from exc
        logger.warning("cannot check the live policy, serving %s meanwhile: %s", current.label, exc)
        _served.checked_at = time.monotonic()
        return current

    if key is None:
        if current is not None:
            logger.warning("no policy version is live any more; %s is no longer served", current.label)
        _served.policy = None
        SERVING_LIVE_VERSION.labels(_POLICY).set(0)
        raise ServingError(_NO_POLICY, code="no_live_policy")
    _served.checked_at = time.monotonic()
    if current is not None and current.version_id == key[0]:
        return current
    if key in _served.failed or version is None:
        if current is not None:
            return current
        failed = _served.failed.get(key)
        raise (
            ServingError(failed.message, code=failed.code)
            if failed
            else ServingError(_NO_POLICY, code="no_live_policy")
        )

    try:
        policy = await asyncio.to_thread(_load_shared, version)
    except Exception as exc:
        error = await _record_failure(version, exc)
        _served.failed[key] = error
        if current is not None:
            logger.error("%s could not be loaded; still serving %s", version.label, current.label)
            return current
        raise error from exc

    if version.load_error:
        try:
            await db_async(services.model_version_record_load_error)(version_id=version.id, error="")
        except DatabaseError:
            logger.exception("could not clear the load error of %s", version.label)
    _served.policy = policy
    _served.checked_at = time.monotonic()
    SERVING_LIVE_VERSION.labels(_POLICY).set(version.number)
    logger.info(
        "serving %s (%s backend)%s", version.label, version.backend, f", was {current.label}" if current else ""
    )
    return policy


def _load_shared(version: ModelVersion) -> ServedPolicy:
    global _loaded
    with _load_lock:
        if _loaded is not None and _loaded.version_id == version.id:
            return _loaded
        _loaded = load_policy(version)
        return _loaded


def load_policy(version: ModelVersion) -> ServedPolicy:
    """Load one version with its backend. Blocking (the local backend reads and verifies the files)."""
    started = time.perf_counter()
    if version.backend == ModelVersion.Backend.OPENAI:
        from models_registry.serving.openai_compat import OpenAIPolicy

        policy: ServedPolicy = OpenAIPolicy.load(version)
    else:
        # Imported here: torch and transformers take seconds to import, and only this backend needs them.
        from models_registry.serving.local import LocalPolicy

        policy = LocalPolicy.load(version)
    logger.info("loaded %s in %.1f s", version.label, time.perf_counter() - started)
    return policy


async def _record_failure(version: ModelVersion, exc: BaseException) -> ServingError:
    detail = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
    logger.error("loading %s failed: %s", version.label, detail, exc_info=not isinstance(exc, ServingError))
    MODEL_LOAD_FAILURES.labels(version.label).inc()
    try:
        await db_async(services.model_version_record_load_error)(version_id=version.id, error=detail)
    except DatabaseError:
        logger.exception("could not store the load error of %s", version.label)
    return ServingError(
        "The assistant's model could not be loaded. Operators have been notified.", code="model_load_failed"
    )


_OTHERS_KEPT = 2
_RETRY_FAILED_SECONDS = 60.0
# Versions served besides the live one (canaries), by id, oldest first; and when one last failed.
_others: dict[int, ServedPolicy] = {}
_others_failed: dict[int, tuple[float, ServingError]] = {}
_others_lock = threading.Lock()


async def get_policy_for(version_id: int) -> ServedPolicy:
    """The policy of version ``version_id`` (a canary's arm), loaded once per process.

    Raises ``ServingError`` when it cannot be loaded (the reason is stored on the version); the
    caller may answer with the live policy instead."""
    try:
        live = await get_policy()
    except ServingError:
        live = None
    if live is not None and live.version_id == version_id:
        return live
    if (policy := _others.get(version_id)) is not None:
        return policy
    failed = _others_failed.get(version_id)
    if failed is not None and time.monotonic() - failed[0] < _RETRY_FAILED_SECONDS:
        raise failed[1]
    version = await db_async(ModelVersion.objects.filter(id=version_id).first)()
    if version is None:
        raise ServingError(f"Model version {version_id} does not exist.", code="no_such_version")
    try:
        policy = await asyncio.to_thread(_load_other, version)
    except Exception as exc:
        error = await _record_failure(version, exc)
        _others_failed[version_id] = (time.monotonic(), error)
        raise error from exc
    _others_failed.pop(version_id, None)
    return policy


def _load_other(version: ModelVersion) -> ServedPolicy:
    with _others_lock:
        if (policy := _others.get(version.id)) is not None:
            return policy
        policy = load_policy(version)
        _others[version.id] = policy
        while len(_others) > _OTHERS_KEPT:
            _others.pop(next(iter(_others)))
        logger.info("serving %s beside the live version", version.label)
        return policy


def reset() -> None:
    """Forget the served policy and everything cached with it (for tests)."""
    global _served, _loaded
    with _load_lock:
        _loaded = None
    with _others_lock:
        _others.clear()
        _others_failed.clear()
    _served = _Served()
    _check_locks.clear()
    reset_slots()
