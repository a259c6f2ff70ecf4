"""Supabase-issued JWTs: HS256 with the project secret, and asymmetric keys from a JWKS endpoint."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from feedback.models import Feedback
from rlhf_site import auth
from tests.factories import AssistantMessageFactory, ConversationFactory

SECRET = "super-secret-jwt-token-with-at-least-32-characters"
SUB = "6f1c1b7e-6a53-4d0f-9b0e-2b8f9d0e4c11"


def claims(**overrides):
    now = int(time.time())
    return {"sub": SUB, "email": "carol@example.com", "aud": "authenticated", "role": "authenticated",
            "iat": now, "exp": now + 600, **overrides}  # fmt: skip


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def hs256(settings):
    settings.SUPABASE_JWT_SECRET = SECRET


def test_a_valid_supabase_token_maps_to_a_local_user_who_can_rate(db, hs256):
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    client = bearer(token)
    assert client.get("/api/assistant/feedback").status_code == 200
    user = get_user_model().objects.get(username=f"supabase-{SUB}")
    assert user.email == "carol@example.com"

    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
    response = client.post("/api/assistant/feedback", {"message_id": str(answer.id), "thumbs": "up"}, format="json")
    assert response.status_code == 201
    assert Feedback.objects.get().user == user
    # A second call finds the same user rather than making another.
    client.get("/api/assistant/feedback")
    assert get_user_model().objects.filter(username__startswith="supabase-").count() == 1


@pytest.mark.parametrize(
    ("token_factory", "message"),
    [
        (lambda: jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256"), "The token has expired."),
        (lambda: jwt.encode(claims(), "another-secret-of-sufficient-length-xx", algorithm="HS256"), "Invalid token"),
        (lambda: jwt.encode(claims(aud="anon"), SECRET, algorithm="HS256"), "Invalid token"),
        (
            lambda: jwt.encode({k: v for k, v in claims().items() if k != "sub"}, SECRET, algorithm="HS256"),
            "Invalid token",
        ),
        (lambda: "not.a.jwt", "Invalid token"),
    ],
)
def test_bad_tokens_get_401_with_a_reason(db, hs256, token_factory, message):
    response = bearer(token_factory()).get("/api/assistant/feedback")
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith(message)
    assert not get_user_model().objects.filter(username__startswith="supabase-").exists()


def test_bearer_tokens_are_ignored_when_supabase_is_not_configured(db):
    response = bearer(jwt.encode(claims(), SECRET, algorithm="HS256")).get("/api/assistant/feedback")
    assert response.status_code == 401
    assert not get_user_model().objects.exists()


@pytest.fixture
def jwks_server():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    auth._jwks_client.cache_clear()
    yield key, f"http://127.0.0.1:{server.server_port}/auth/v1/.well-known/jwks.json"
    server.shutdown()


def test_tokens_signed_with_a_jwks_key_are_accepted(db, settings, hs256, jwks_server):
    key, url = jwks_server
    settings.SUPABASE_JWKS_URL = url
    token = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k1"})
    assert bearer(token).get("/api/assistant/feedback").status_code == 200
    assert get_user_model().objects.filter(username=f"supabase-{SUB}").exists()

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "k1"})
    assert bearer(forged).get("/api/assistant/feedback").status_code == 401
