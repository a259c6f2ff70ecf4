"""API authentication: DRF's tokens (one raw query, ``TokenAuthentication``), the same tokens sent as
``Bearer`` (``BearerTokenAuthentication``), and optional JWTs issued by Supabase Auth.

Enabled when ``SUPABASE_JWT_SECRET`` (HS256, the project's JWT secret) or ``SUPABASE_JWKS_URL``
(asymmetric keys, ``https://<project>.supabase.co/auth/v1/.well-known/jwks.json``) is set. The
token's ``sub`` (the Supabase user id) maps to a local user named ``supabase-<sub>``, created on
first sight, so feedback rows always point at a real local user.
"""

from __future__ import annotations

import functools
from functools import lru_cache
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, router
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.request import Request

USERNAME_PREFIX = "supabase-"


@lru_cache(maxsize=4)
def _jwks_client(url: str) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


class SupabaseJWTAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, dict[str, Any]] | None:
        if not (settings.SUPABASE_JWT_SECRET or settings.SUPABASE_JWKS_URL):
            return None
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Bearer header: expected 'Bearer <token>'.")
        claims = self.decode(header[1].decode("latin-1"))
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise exceptions.AuthenticationFailed("The token has no subject.")
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(
            username=f"{USERNAME_PREFIX}{subject}"[:150], defaults={"email": claims.get("email") or ""}
        )
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, claims

    def decode(self, token: str) -> dict[str, Any]:
        options = {"require": ["exp", "sub"]}
        kwargs: dict[str, Any] = {"audience": settings.SUPABASE_JWT_AUDIENCE, "options": options}
        if settings.SUPABASE_JWT_ISSUER:
            kwargs["issuer"] = settings.SUPABASE_JWT_ISSUER
        try:
            algorithm = jwt.get_unverified_header(token).get("alg", "")
            if algorithm == "HS256" and settings.SUPABASE_JWT_SECRET:
                return jwt.decode(token, settings.SUPABASE_JWT_SECRET, algorithms=["HS256"], **kwargs)
            if settings.SUPABASE_JWKS_URL and algorithm in {"RS256", "ES256", "EdDSA"}:
                key = _jwks_client(settings.SUPABASE_JWKS_URL).get_signing_key_from_jwt(token)
                return jwt.decode(token, key.key, algorithms=[algorithm], **kwargs)
        except jwt.ExpiredSignatureError:
            raise exceptions.AuthenticationFailed("The token has expired.") from None
        except jwt.PyJWKClientError as exc:
            raise exceptions.AuthenticationFailed(f"The token's signing key cannot be found: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise exceptions.AuthenticationFailed(f"Invalid token: {exc}") from None
        raise exceptions.AuthenticationFailed(f"Tokens signed with {algorithm or 'no algorithm'} are not accepted.")

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication (``Authorization: Token <key>``), the token and its user read in one
    raw query: the ORM's ``select_related`` lookup spent a fifth of a rating's server CPU compiling
    its SQL (py-spy; README, "Feedback API under load"). Same answers and errors as DRF's."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        from rest_framework.authtoken.models import Token

        model = get_user_model()
        alias = router.db_for_read(model)
        sql, fields = _token_user_query()
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        values = [_from_db(field, value, connections[alias]) for field, value in zip(fields, row[:-1], strict=True)]
        user = model.from_db(alias, [field.attname for field in fields], values)
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token(key=key, user=user, created=row[-1])
        token._state.adding, token._state.db = False, alias
        return user, token


def _from_db(field: Any, value: Any, connection: Any) -> Any:
    """A column's value as the ORM would load it (its field's converters, e.g. a JSON field's)."""
    for converter in field.get_db_converters(connection):
        value = converter(value, field.get_col(field.model._meta.db_table), connection)
    return value


@functools.cache
def _token_user_query() -> tuple[str, list[Any]]:
    """The user's columns and the token's creation time, by key; the user's fields in column order.
    A plain cursor, not ``objects.raw``: its query machinery cost as much CPU as the query (py-spy)."""
    from rest_framework.authtoken.models import Token

    model = get_user_model()
    fields = list(model._meta.concrete_fields)
    columns = ", ".join(f'u."{field.column}"' for field in fields)
    sql = (
        f'SELECT {columns}, t.created FROM "{model._meta.db_table}" u'
        f' JOIN "{Token._meta.db_table}" t ON t.user_id = u."{model._meta.pk.column}" WHERE t.key = %s'
    )
    return sql, fields


class BearerTokenAuthentication(TokenAuthentication):
    """The API token sent as ``Authorization: Bearer <token>``, as OpenAI clients send their key.

    A value shaped like a JWT (three dot-separated parts) is left to ``SupabaseJWTAuthentication``,
    which comes after this class; anything else must be a valid API token."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).split()
        if len(header) == 2 and header[0].lower() == b"bearer" and header[1].count(b".") == 2:
            return None
        return super().authenticate(request)
