"""Simulated users with a hidden preference, to show that the loop makes the model better.

Each simulated user chats through the platform's real interfaces, as a person does: it opens a
conversation, asks over the chat WebSocket (``/ws/chat/<id>/``), reads the answer through the REST API,
presses Regenerate (over the socket) as people do and votes A/B between two answers, and rates each
answer with thumbs through ``POST /api/assistant/feedback``. It likes an answer when the answer has its
hidden preference and dislikes it otherwise; that is the only signal the platform gets.

Preferences: ``training.ml.preferences``.

No hidden labels reach the platform: the users only thumb, vote and compare.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from rest_framework.authtoken.models import Token

from training.ml.preferences import PREFERENCES, questions

SIMULATED_PREFIX = "simulated-"
FINAL = re.compile(r'hx-swap-oob="outerHTML"|<article[^>]*data-status="failed"')
CONVERSATION_URL = re.compile(r"/c/([0-9a-f-]{36})/")
ANSWER_ID = re.compile(r'id="answer-([0-9a-f-]{36})"')


class SimulationError(Exception):
    """The simulation cannot go on; the message says why."""


@dataclass
class Answer:
    id: str
    text: str
    version: str | None
    prompt_id: str

    def liked(self, preference: str) -> bool:
        return PREFERENCES[preference](self.text)


@dataclass
class Tally:
    """Answers per version and how many met the preference."""

    answers: dict[str, int] = field(default_factory=dict)
    liked: dict[str, int] = field(default_factory=dict)
    thumbs: int = 0
    votes: int = 0

    def add(self, answer: Answer, liked: bool) -> None:
        version = answer.version or "none"
        self.answers[version] = self.answers.get(version, 0) + 1
        self.liked[version] = self.liked.get(version, 0) + int(liked)

    def share(self, version: str | None = None) -> float | None:
        answers = sum(self.answers.values()) if version is None else self.answers.get(version, 0)
        liked = sum(self.liked.values()) if version is None else self.liked.get(version, 0)
        return liked / answers if answers else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": dict(self.answers),
            "share": {v: round(self.liked[v] / n, 4) for v, n in self.answers.items() if n},
            "thumbs": self.thumbs,
            "votes": self.votes,
        }


@dataclass
class SimulatedUser:
    username: str
    token: str
    session: str


class Simulator:
    """Drives simulated users against a running platform at ``base_url``.

    A user asks a question; when they dislike the answer they press Regenerate, up to ``retries``
    times, until they get one they like (people do); when they like the first one they still
    regenerate now and then (``curious``), to see another. With two answers or more they vote A/B
    between the first and the last. Each answer is thumbed up or down with probability ``rate``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        preference: str,
        seed: int = 0,
        retries: int = 2,
        curious: float = 0.2,
        rate: float = 0.9,
        timeout: float = 300.0,
    ) -> None:
        if preference not in PREFERENCES:
            raise ValueError(f"Unknown preference {preference!r}; choose one of {', '.join(PREFERENCES)}.")
        self.base_url = base_url.rstrip("/")
        self.preference = preference
        self.rng = random.Random(seed)
        self.retries = retries
        self.curious = curious
        self.rate = rate
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    # --- Users ---------------------------------------------------------------------------------------

    @staticmethod
    def users(count: int, prefix: str = SIMULATED_PREFIX) -> list[SimulatedUser]:
        """``count`` users with an API token and a logged-in browser session each (made once)."""
        user_model = get_user_model()
        made = []
        for i in range(count):
            user, _ = user_model.objects.get_or_create(username=f"{prefix}{i:03d}")
            token, _ = Token.objects.get_or_create(user=user)
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            made.append(SimulatedUser(user.get_username(), token.key, session.session_key or ""))
        return made

    # --- One conversation ----------------------------------------------------------------------------

    def question(self) -> str:
        return questions(1, self.rng)[0]

    def converse(self, user: SimulatedUser, tally: Tally) -> list[Answer]:
        """One conversation: ask, regenerate as the user would, vote, rate what was answered."""
        from websockets.sync.client import connect
        from websockets.typing import Origin

        conversation = self._new_conversation(user)
        url = self.base_url.replace("http", "ws", 1) + f"/ws/chat/{conversation}/"
        headers = {"Cookie": f"sessionid={user.session}"}
        with connect(url, origin=Origin(self.base_url), additional_headers=headers, open_timeout=30) as socket:
            answers = [self._ask(socket, {"type": "send", "content": self.question()}, user, conversation)]
            while self._wants_another(answers):
                again = {"type": "regenerate", "message_id": answers[-1].id}
                answers.append(self._ask(socket, again, user, conversation))
        for answer in answers:
            liked = answer.liked(self.preference)
            tally.add(answer, liked)
            if self.rng.random() < self.rate:
                thumbs = "up" if liked else "down"
                self._post(user, "/api/assistant/feedback", {"message_id": answer.id, "thumbs": thumbs})
                tally.thumbs += 1
        if len(answers) >= 2:
            self._vote(user, answers[0], answers[-1], tally)
        return answers

    def _new_conversation(self, user: SimulatedUser) -> str:
        """The chat page's "New chat" button: a form POST with the session and its CSRF token (a
        browser of its own: its cookies are this user's)."""
        with httpx.Client(base_url=self.base_url, cookies={"sessionid": user.session}, timeout=self.timeout) as browser:
            page = browser.get("/", follow_redirects=True)
            token = browser.cookies.get("csrftoken")
            if page.status_code != 200 or not token:
                raise SimulationError(f"The chat page answered {page.status_code} without a CSRF cookie.")
            created = browser.post("/c/new", headers={"X-CSRFToken": token})
        found = CONVERSATION_URL.search(created.headers.get("location", ""))
        if created.status_code != 302 or found is None:
            raise SimulationError(f"POST /c/new answered {created.status_code}: {created.text[:300]}")
        return found.group(1)

    def _wants_another(self, answers: list[Answer]) -> bool:
        if answers[-1].liked(self.preference):
            return len(answers) == 1 and self.rng.random() < self.curious
        return len(answers) <= self.retries

    def _ask(self, socket: Any, frame: dict[str, Any], user: SimulatedUser, conversation: str) -> Answer:
        socket.send(json.dumps(frame))
        while True:
            message = socket.recv(timeout=self.timeout)
            text = message.decode() if isinstance(message, bytes) else message
            if FINAL.search(text):
                found = ANSWER_ID.search(text)
                if found is None:
                    raise SimulationError(f"The platform's final frame names no answer: {text[:300]}")
                return self._read(user, conversation, found.group(1))

    def _read(self, user: SimulatedUser, conversation: str, answer_id: str) -> Answer:
        """The answer as a client reads it: through the REST API."""
        listing = self.http.get(
            f"/api/assistant/conversations/{conversation}/messages?page_size=200",
            headers={"Authorization": f"Token {user.token}"},
        )
        if listing.status_code != 200:
            raise SimulationError(f"GET messages answered {listing.status_code}: {listing.text[:300]}")
        row = next(m for m in listing.json()["results"] if m["id"] == answer_id)
        if row["status"] != "complete":
            raise SimulationError(f"An answer ended {row['status']}: {row.get('error') or 'no reason given'}")
        return Answer(id=answer_id, text=row["content"], version=row["model_version"], prompt_id=row["parent_id"])

    def _vote(self, user: SimulatedUser, a: Answer, b: Answer, tally: Tally) -> None:
        liked_a, liked_b = a.liked(self.preference), b.liked(self.preference)
        chosen, rejected = (b, a) if liked_b and not liked_a else (a, b)
        body: dict[str, Any] = {"prompt_message_id": a.prompt_id, "chosen_message_id": chosen.id}
        body["rejected_message_id"] = rejected.id
        if liked_a == liked_b:
            body["is_tie"] = True
        self._post(user, "/api/assistant/comparisons", body)
        tally.votes += 1

    def _post(self, user: SimulatedUser, path: str, body: dict[str, Any]) -> None:
        response = self.http.post(path, json=body, headers={"Authorization": f"Token {user.token}"})
        if response.status_code >= 400:
            raise SimulationError(f"POST {path} answered {response.status_code}: {response.text[:300]}")

    def chat(
        self,
        users: list[SimulatedUser],
        conversations: int,
        tally: Tally | None = None,
        *,
        every: int = 0,
        after: Callable[[int, Tally], bool] | None = None,
    ) -> Tally:
        """``conversations`` conversations spread over ``users`` in turn; every ``every`` conversations
        (and at the end) ``after(done, tally)`` is called, and a True from it stops the chat early."""
        tally = tally or Tally()
        for done in range(1, conversations + 1):
            self.converse(users[self.rng.randrange(len(users))], tally)
            due = (every and done % every == 0) or done == conversations
            if after is not None and due and after(done, tally):
                break
        return tally

    def close(self) -> None:
        self.http.close()
