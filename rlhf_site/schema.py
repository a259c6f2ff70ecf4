"""drf-spectacular hooks."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


def drop_trailing_slash_twins(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """Every API path is also routed with a trailing slash; document each once."""
    return [endpoint for endpoint in endpoints if not endpoint[0].endswith("/")]


class SupabaseJWTScheme(OpenApiAuthenticationExtension):
    target_class = "rlhf_site.auth.SupabaseJWTAuthentication"
    name = "supabaseJWT"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (issued by Supabase Auth; optional)"}


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "rlhf_site.auth.BearerTokenAuthentication"
    name = "bearerTokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "API token (as OpenAI clients send a key)"}
