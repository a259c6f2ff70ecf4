"""The chat pages: conversation list, one conversation (its socket streams answers), sign-up."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from feedback import chat, selectors, services


@login_required
def chat_index(request: HttpRequest) -> HttpResponse:
    latest = selectors.conversation_list(user=request.user).first()
    if latest is None:
        latest = services.conversation_create(user=request.user)
    return redirect("chat-conversation", conversation_id=latest.id)


@login_required
@require_POST
def chat_new(request: HttpRequest) -> HttpResponse:
    conversation = services.conversation_create(user=request.user)
    return redirect("chat-conversation", conversation_id=conversation.id)


@login_required
def chat_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = chat.conversation_for_user(user=request.user, conversation_id=conversation_id)
    if conversation is None:
        raise Http404("Conversation not found.")
    context = {
        "conversation": conversation,
        "conversations": selectors.conversation_list(user=request.user)[:50],
        "turns": chat.turns_for_page(user=request.user, conversation=conversation),
        "satisfaction": selectors.satisfaction_get(user=request.user),
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    return render(request, "chat/page.html", context)


def signup(request: HttpRequest) -> HttpResponse:
    if not settings.CHAT_SIGNUP_ENABLED:
        raise Http404("Sign-up is closed.")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("chat-index")
    return render(request, "registration/signup.html", {"form": form})
