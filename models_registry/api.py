"""The registry REST API: versions, their events and canaries, and every action of the admin (approve,
reject, deploy, roll back, canary start / stop / promote, register an external server), so that a
CI pipeline can deploy with a token alone.

Reads need the *view model version* permission; each action needs what its service checks (approve,
deploy, add), and under ``REGISTRY_FOUR_EYES`` the four-eyes rule. Every POST honours an
``Idempotency-Key``. Errors have the one JSON shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from core.errors import IDEMPOTENCY_HEADER, error_responses
from core.idempotency import idempotent
from core.params import choice_param, integer_param
from models_registry import selectors, services
from models_registry.exceptions import VersionNotFound
from models_registry.models import Canary, DeploymentEvent, ModelVersion
from models_registry.serializers import (
    CanarySerializer,
    CanaryStartInputSerializer,
    DeploymentEventSerializer,
    ReasonInputSerializer,
    RegisterInputSerializer,
    RequiredReasonInputSerializer,
    VersionDetailSerializer,
    VersionSerializer,
)

ERRORS = error_responses({403: "Missing permission, or four-eyes.", 409: "The version's status does not allow it."})
VIEW_PERMISSION = "models_registry.view_modelversion"
KIND = OpenApiParameter("kind", OpenApiTypes.STR, OpenApiParameter.PATH, enum=ModelVersion.Kind.values)


class CanViewVersions(BasePermission):
    message = "You need the permission to view model versions."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return bool(request.user and request.user.has_perm(VIEW_PERMISSION))
        return bool(request.user and request.user.is_authenticated)  # the services check each action


def _version(version_id: int) -> ModelVersion:
    version = selectors.version_list().filter(pk=version_id).first()
    if version is None:
        raise VersionNotFound(f"Model version {version_id} does not exist.")
    return version


def _act(
    request: Request, scope: str, serializer_class: type[Serializer], call: Callable[[dict[str, Any]], Any]
) -> Response:
    """Validate the body, run the action once per Idempotency-Key, answer with what it returns."""
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)

    def run() -> tuple[int, dict[str, Any]]:
        return call(serializer.validated_data)

    status, body = idempotent(
        user=request.user, scope=scope, key=request.headers.get("Idempotency-Key"), payload=request.data, call=run
    )
    return Response(body, status=status)


def _detail(version: ModelVersion, status: int = 200) -> tuple[int, dict[str, Any]]:
    return status, dict(VersionDetailSerializer(_version(version.pk)).data)


class VersionCollectionApi(GenericAPIView):
    serializer_class = VersionSerializer
    permission_classes = [CanViewVersions]

    @extend_schema(
        operation_id="registry_version_list",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=ModelVersion.Kind.values),
            OpenApiParameter("status", OpenApiTypes.STR, enum=ModelVersion.Status.values),
        ],
        responses={200: VersionSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        versions = selectors.version_list(
            kind=choice_param(request, "kind", ModelVersion.Kind.values),
            status=choice_param(request, "status", ModelVersion.Status.values),
        )
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(VersionSerializer(page, many=True).data)

    @extend_schema(
        operation_id="registry_version_register",
        request=RegisterInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: VersionDetailSerializer, **ERRORS},
        description="Register a model served by an external OpenAI-compatible server as a candidate (needs the"
        " add permission; its host must be on SERVING_OPENAI_ALLOWED_HOSTS).",
    )
    def post(self, request: Request) -> Response:
        def register(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            version = services.model_version_register(
                kind=data["kind"],
                artifact_path="",
                checksums={},
                backend=ModelVersion.Backend.OPENAI,
                base_url=data["base_url"],
                model_name=data["model_name"],
                metrics=data["metrics"],
                actor=request.user,
                reason=data["reason"] or "registered through the API",
            )
            return _detail(version, 201)

        return _act(request, "registry:register", RegisterInputSerializer, register)


class VersionDetailApi(GenericAPIView):
    serializer_class = VersionDetailSerializer
    permission_classes = [CanViewVersions]

    @extend_schema(operation_id="registry_version_retrieve", responses={200: VersionDetailSerializer, **ERRORS})
    def get(self, request: Request, version_id: int) -> Response:
        return Response(VersionDetailSerializer(_version(version_id)).data)


def _version_action(
    name: str, service: Callable[..., Any], *, input_serializer: type[Serializer] = ReasonInputSerializer
) -> type[GenericAPIView]:
    class VersionActionApi(GenericAPIView):
        serializer_class = VersionDetailSerializer
        permission_classes = [CanViewVersions]

        @extend_schema(
            operation_id=f"registry_version_{name}",
            request=input_serializer,
            parameters=[IDEMPOTENCY_HEADER],
            responses={200: VersionDetailSerializer, **ERRORS},
        )
        def post(self, request: Request, version_id: int) -> Response:
            def run(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                service(version_id=version_id, actor=request.user, **data)
                return _detail(_version(version_id))

            return _act(request, f"registry:{name}:{version_id}", input_serializer, run)

    VersionActionApi.__name__ = f"Version{name.title()}Api"
    return VersionActionApi


VersionApproveApi = _version_action("approve", services.model_version_approve)
VersionRejectApi = _version_action("reject", services.model_version_reject)
VersionDeployApi = _version_action("deploy", services.model_version_deploy)
VersionCanaryApi = _version_action("canary", services.canary_start, input_serializer=CanaryStartInputSerializer)


def _kind_action(name: str, service: Callable[..., Any], input_serializer: type[Serializer]) -> type[GenericAPIView]:
    class KindActionApi(GenericAPIView):
        serializer_class = VersionDetailSerializer
        permission_classes = [CanViewVersions]

        @extend_schema(
            operation_id=f"registry_{name}",
            request=input_serializer,
            parameters=[KIND, IDEMPOTENCY_HEADER],
            responses={200: VersionDetailSerializer, **ERRORS},
        )
        def post(self, request: Request, kind: str) -> Response:
            def run(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                result = service(kind=kind, actor=request.user, **data)
                version = result.version if isinstance(result, Canary) else result
                return _detail(version)

            return _act(request, f"registry:{name}:{kind}", input_serializer, run)

    KindActionApi.__name__ = f"{name.title().replace('_', '')}Api"
    return KindActionApi


RollbackApi = _kind_action("rollback", services.model_version_rollback, RequiredReasonInputSerializer)
CanaryStopApi = _kind_action("canary_stop", services.canary_stop, RequiredReasonInputSerializer)
CanaryPromoteApi = _kind_action("canary_promote", services.canary_promote, ReasonInputSerializer)


class EventListApi(GenericAPIView):
    serializer_class = DeploymentEventSerializer
    permission_classes = [CanViewVersions]

    @extend_schema(
        operation_id="registry_event_list",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=ModelVersion.Kind.values),
            OpenApiParameter("version", OpenApiTypes.INT, description="Only this version's events (its id)."),
        ],
        responses={200: DeploymentEventSerializer(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        events = DeploymentEvent.objects.select_related("version", "actor").order_by("-created_at", "-id")
        if kind := choice_param(request, "kind", ModelVersion.Kind.values):
            events = events.filter(version__kind=kind)
        if (version := integer_param(request, "version")) is not None:
            events = events.filter(version_id=version)
        page = self.paginate_queryset(events)
        return self.get_paginated_response(DeploymentEventSerializer(page, many=True).data)


class CanaryListApi(GenericAPIView):
    serializer_class = CanarySerializer
    permission_classes = [CanViewVersions]

    @extend_schema(operation_id="registry_canary_list", responses={200: CanarySerializer(many=True), **ERRORS})
    def get(self, request: Request) -> Response:
        canaries = Canary.objects.select_related("version", "baseline", "started_by", "ended_by")
        page = self.paginate_queryset(canaries.order_by("-started_at", "-id"))
        return self.get_paginated_response(CanarySerializer(page, many=True).data)
