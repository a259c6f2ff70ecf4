"""The feedback REST API: one view per operation; input serializer, service, output serializer."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ERRORS, IDEMPOTENCY_HEADER
from core.idempotency import idempotent
from feedback import selectors, services, ws_tickets
from feedback.serializers import (
    ComparisonInputSerializer,
    ComparisonOutputSerializer,
    ConversationSerializer,
    ExternalConversationInputSerializer,
    ExternalTurnInputSerializer,
    ExternalTurnOutputSerializer,
    FeedbackInputSerializer,
    FeedbackOutputSerializer,
    FeedbackWriteOutputSerializer,
    MessageSerializer,
    SatisfactionSerializer,
)


def _uuid_param(request: Request, name: str) -> uuid.UUID | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["Must be a valid UUID."]}) from None


class FeedbackCollectionApi(GenericAPIView):
    serializer_class = FeedbackOutputSerializer

    @extend_schema(
        operation_id="feedback_list",
        parameters=[OpenApiParameter("message_id", OpenApiTypes.UUID, description="Only feedback on this message.")],
        responses={200: FeedbackOutputSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        queryset = selectors.feedback_list(user=request.user, message_id=_uuid_param(request, "message_id"))
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(FeedbackOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="feedback_upsert",
        request=FeedbackInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={
            201: OpenApiResponse(FeedbackWriteOutputSerializer, description="Created."),
            200: OpenApiResponse(FeedbackWriteOutputSerializer, description="Updated."),
            **ERRORS,
        },
        description=(
            "Create or update your feedback on one of your assistant messages, or on one step of it "
            "(`step_index`, from 0). Fields you leave out keep their stored value; `null` clears one."
        ),
    )
    def post(self, request: Request) -> Response:
        serializer = FeedbackInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def call() -> tuple[int, dict[str, Any]]:
            result = services.feedback_upsert(
                user=request.user,
                message_id=data["message_id"],
                step_index=data.get("step_index"),
                **{name: data[name] for name in ("thumbs", "rating", "comment", "tags", "correction") if name in data},
            )
            result.feedback.satisfaction = result.satisfaction  # type: ignore[attr-defined]
            body = dict(FeedbackWriteOutputSerializer(result.feedback).data)
            return (status.HTTP_201_CREATED if result.created else status.HTTP_200_OK), body

        code, body = idempotent(
            user=request.user,
            scope="feedback",
            key=request.headers.get("Idempotency-Key"),
            payload=request.data,
            call=call,
        )
        return Response(body, status=code)


class FeedbackDetailApi(GenericAPIView):
    serializer_class = FeedbackOutputSerializer

    @extend_schema(operation_id="feedback_retrieve", responses={200: FeedbackOutputSerializer, **ERRORS})
    def get(self, request: Request, feedback_id: int) -> Response:
        feedback = selectors.feedback_get(user=request.user, feedback_id=feedback_id)
        return Response(FeedbackOutputSerializer(feedback).data)

    @extend_schema(
        operation_id="feedback_delete",
        responses={
            200: inline_serializer("FeedbackDeleted", fields={"satisfaction": SatisfactionSerializer()}),
            **ERRORS,
        },
    )
    def delete(self, request: Request, feedback_id: int) -> Response:
        satisfaction = services.feedback_delete(user=request.user, feedback_id=feedback_id)
        return Response({"satisfaction": SatisfactionSerializer(satisfaction).data})


class ComparisonCollectionApi(GenericAPIView):
    serializer_class = ComparisonOutputSerializer

    @extend_schema(operation_id="comparison_list", responses={200: ComparisonOutputSerializer(many=True), **ERRORS})
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.comparison_list(user=request.user))
        return self.get_paginated_response(ComparisonOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="comparison_create",
        request=ComparisonInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: ComparisonOutputSerializer, 200: ComparisonOutputSerializer, **ERRORS},
        description="Record which of two answers to the same prompt you prefer; posting the pair again updates it.",
    )
    def post(self, request: Request) -> Response:
        serializer = ComparisonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def call() -> tuple[int, dict[str, Any]]:
            comparison, created = services.comparison_record(
                user=request.user,
                prompt_id=data["prompt_message_id"],
                chosen_id=data["chosen_message_id"],
                rejected_id=data["rejected_message_id"],
                is_tie=data["is_tie"],
            )
            return (201 if created else 200), dict(ComparisonOutputSerializer(comparison).data)

        code, body = idempotent(
            user=request.user,
            scope="comparison",
            key=request.headers.get("Idempotency-Key"),
            payload=request.data,
            call=call,
        )
        return Response(body, status=code)


class ConversationListApi(GenericAPIView):
    serializer_class = ConversationSerializer

    @extend_schema(operation_id="conversation_list", responses={200: ConversationSerializer(many=True), **ERRORS})
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.conversation_list(user=request.user))
        return self.get_paginated_response(ConversationSerializer(page, many=True).data)

    @extend_schema(
        operation_id="conversation_log_external",
        request=ExternalConversationInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: ExternalTurnOutputSerializer, **ERRORS},
        description=(
            "Log a conversation whose answer your own model generated: a new conversation with the user's "
            "`prompt` and your model's `answer` (cut into steps, marked external with `model`). Rate the answer "
            "with `POST /api/assistant/feedback` like any other."
        ),
    )
    def post(self, request: Request) -> Response:
        serializer = ExternalConversationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _log_external(request, serializer.validated_data, conversation_id=None)


class ConversationTurnsApi(GenericAPIView):
    serializer_class = ExternalTurnOutputSerializer

    @extend_schema(
        operation_id="conversation_turn_log_external",
        request=ExternalTurnInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: ExternalTurnOutputSerializer, **ERRORS},
        description="Log one more turn (the user's `prompt`, your model's `answer`) in one of your conversations.",
    )
    def post(self, request: Request, conversation_id: uuid.UUID) -> Response:
        serializer = ExternalTurnInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _log_external(request, serializer.validated_data, conversation_id=conversation_id)


def _log_external(request: Request, data: dict[str, Any], *, conversation_id: uuid.UUID | None) -> Response:
    def call() -> tuple[int, dict[str, Any]]:
        turn = services.external_turn_record(
            user=request.user,
            conversation_id=conversation_id,
            title=data.get("title", ""),
            prompt=data["prompt"],
            answer=data["answer"],
            model=data["model"],
        )
        return status.HTTP_201_CREATED, dict(ExternalTurnOutputSerializer(turn).data)

    code, body = idempotent(
        user=request.user,
        scope=f"external-turn:{conversation_id or 'new'}",
        key=request.headers.get("Idempotency-Key"),
        payload=request.data,
        call=call,
    )
    return Response(body, status=code)


class ConversationDetailApi(GenericAPIView):
    serializer_class = ConversationSerializer

    @extend_schema(operation_id="conversation_retrieve", responses={200: ConversationSerializer, **ERRORS})
    def get(self, request: Request, conversation_id: uuid.UUID) -> Response:
        conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
        return Response(ConversationSerializer(conversation).data)


class ConversationMessagesApi(GenericAPIView):
    serializer_class = MessageSerializer

    @extend_schema(operation_id="conversation_messages", responses={200: MessageSerializer(many=True), **ERRORS})
    def get(self, request: Request, conversation_id: uuid.UUID) -> Response:
        messages = selectors.conversation_messages(user=request.user, conversation_id=conversation_id)
        page = self.paginate_queryset(messages)
        return self.get_paginated_response(MessageSerializer(page, many=True).data)


class SatisfactionApi(GenericAPIView):
    serializer_class = SatisfactionSerializer

    @extend_schema(operation_id="satisfaction_retrieve", responses={200: SatisfactionSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(SatisfactionSerializer(selectors.satisfaction_get(user=request.user)).data)


class WsTicketApi(GenericAPIView):
    serializer_class = None

    @extend_schema(
        operation_id="ws_ticket_create",
        request=None,
        responses={
            201: inline_serializer(
                "WsTicket",
                fields={
                    "ticket": serializers.CharField(),
                    "expires_in": serializers.IntegerField(help_text="Seconds (WS_TICKET_SECONDS)."),
                },
            ),
            **ERRORS,
        },
        description=(
            "A short-lived, single-use ticket that opens the chat socket for you without a session cookie "
            "(for API-token and Supabase-JWT users): connect to `/ws/chat/<conversation id>/?ticket=<ticket>`."
        ),
    )
    def post(self, request: Request) -> Response:
        ticket = ws_tickets.ticket_issue(user=request.user)
        return Response(
            {"ticket": ticket.ticket, "expires_in": settings.WS_TICKET_SECONDS}, status=status.HTTP_201_CREATED
        )
