"""Sign-in for the chat (/accounts/login/) and the admin (/admin/login/): throttled per username and
per address, and safe on any text.

Failed attempts are counted per username (LOGIN_RATE_PER_USERNAME) and per client address
(LOGIN_RATE_PER_ADDRESS) over a rolling period (``core.ratelimit``). Once either count is used up,
every attempt for that username or from that address is refused with a message and a 429, whether
the password is right or not, until the count over the period falls under the rate again; other
users and other addresses sign in as usual.
Counters degrade open: with the cache down, sign-in is not throttled (README "Abuse limits").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import NON_FIELD_ERRORS
from django.http import HttpRequest, HttpResponse
from rest_framework.throttling import BaseThrottle

from core import ratelimit
from core.jsonsafe import has_surrogate

THROTTLED = "throttled"


def client_address(request: HttpRequest) -> str:
    """The client's address, as the REST API's throttles see it (X-Forwarded-For only with NUM_PROXIES)."""
    return BaseThrottle().get_ident(request) or "unknown"


def _keys(request: HttpRequest | None, username: str) -> list[tuple[str, str | None]]:
    name = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    keys = [(f"login:user:{name}", settings.LOGIN_RATE_PER_USERNAME)]
    if request is not None:
        keys.append((f"login:addr:{client_address(request)}", settings.LOGIN_RATE_PER_ADDRESS))
    return keys


class ThrottledLoginMixin(forms.Form):
    request: HttpRequest | None
    error_messages: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        password = self.cleaned_data.get("password") or ""
        # A lone surrogate cannot be looked up in PostgreSQL nor echoed back on the page.
        if has_surrogate(username) or has_surrogate(password):
            raise forms.ValidationError(
                "The username or password holds characters that are not text.", code="invalid_text"
            )
        keys = _keys(self.request, username)
        for key, rate in keys:
            verdict = ratelimit.peek(key, rate)
            if not verdict.allowed:
                minutes = max(1, math.ceil(verdict.retry_after / 60))
                self.retry_after = verdict.retry_after
                raise forms.ValidationError(
                    "Too many failed sign-in attempts for this username or from this address. "
                    f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
                    code=THROTTLED,
                )
        try:
            return super().clean()  # type: ignore[no-any-return]
        except forms.ValidationError:
            for key, rate in keys:
                ratelimit.hit(key, rate)
            raise


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


def with_throttle_status(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A login view whose page answers 429 (with Retry-After) when the form was throttled."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        if form is not None and form.is_bound and form.has_error(NON_FIELD_ERRORS, THROTTLED):
            response.status_code = 429
            response["Retry-After"] = str(getattr(form, "retry_after", 60))
        return response

    return wrapper


admin.site.login_form = AdminLoginForm
login_view = with_throttle_status(LoginView.as_view(authentication_form=LoginForm))
admin_login_view = with_throttle_status(admin.site.login)
