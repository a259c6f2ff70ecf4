"""The training API: start runs, follow them, cancel them. Operators only (model permissions)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import IDEMPOTENCY_HEADER, error_responses
from core.idempotency import idempotent
from core.params import choice_param
from training import selectors, services
from training.cycle import service as cycle_service
from training.exceptions import RunNotFound
from training.models import Cycle, TrainingRun
from training.serializers import (
    CycleInputSerializer,
    CycleSerializer,
    TrainingRunInputSerializer,
    TrainingRunSerializer,
)

TRAINING_ERRORS = error_responses({403: "Missing permission.", 409: "The run is finished."})


class CanViewRuns(BasePermission):
    message = "You need the permission to view training runs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm("training.view_trainingrun"))


class CanStartRuns(BasePermission):
    message = "You need the permission to start and cancel training runs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return bool(request.user and request.user.has_perm("training.view_trainingrun"))
        return bool(request.user and request.user.has_perm("training.start_trainingrun"))


class TrainingRunCollectionApi(GenericAPIView):
    serializer_class = TrainingRunSerializer
    permission_classes = [CanStartRuns]

    @extend_schema(
        operation_id="training_run_list",
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=TrainingRun.Kind.values),
            OpenApiParameter("status", OpenApiTypes.STR, enum=TrainingRun.Status.values),
        ],
        responses={200: TrainingRunSerializer(many=True), **TRAINING_ERRORS},
    )
    def get(self, request: Request) -> Response:
        runs = selectors.training_run_list(
            kind=choice_param(request, "kind", TrainingRun.Kind.values),
            status=choice_param(request, "status", TrainingRun.Status.values),
        )
        page = self.paginate_queryset(runs)
        return self.get_paginated_response(TrainingRunSerializer(page, many=True).data)

    @extend_schema(
        operation_id="training_run_create",
        request=TrainingRunInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: TrainingRunSerializer, **TRAINING_ERRORS},
        description=(
            "Queue a training run of `kind` (reward, ppo, dpo, kto) on the `training` queue. `config` overrides"
            " the defaults; unknown or out-of-range settings are refused with one message per field."
        ),
    )
    def post(self, request: Request) -> Response:
        serializer = TrainingRunInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def call() -> tuple[int, dict[str, Any]]:
            run = services.training_run_create(kind=data["kind"], config=data["config"], requested_by=request.user)
            return 201, dict(TrainingRunSerializer(selectors.training_run_get(run_id=run.id)).data)

        # A retried POST (a double click, a client timeout) with the same key starts one run, not two.
        code, body = idempotent(
            user=request.user,
            scope="training_run",
            key=request.headers.get("Idempotency-Key"),
            payload=request.data,
            call=call,
        )
        return Response(body, status=code)


class TrainingRunDetailApi(GenericAPIView):
    serializer_class = TrainingRunSerializer
    permission_classes = [CanViewRuns]

    @extend_schema(operation_id="training_run_retrieve", responses={200: TrainingRunSerializer, **TRAINING_ERRORS})
    def get(self, request: Request, run_id: int) -> Response:
        return Response(TrainingRunSerializer(selectors.training_run_get(run_id=run_id)).data)


class TrainingRunCancelApi(GenericAPIView):
    serializer_class = TrainingRunSerializer
    permission_classes = [CanStartRuns]

    @extend_schema(
        operation_id="training_run_cancel",
        request=None,
        responses={200: TrainingRunSerializer, **TRAINING_ERRORS},
        description="Cancel a queued run at once, or ask a running one to stop at its next step (409 if finished).",
    )
    def post(self, request: Request, run_id: int) -> Response:
        services.training_run_cancel(run_id=run_id)
        return Response(TrainingRunSerializer(selectors.training_run_get(run_id=run_id)).data)


# --- Cycles -------------------------------------------------------------------------------------


class CanStartCycles(BasePermission):
    message = "You need the permission to start and cancel improvement cycles."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return bool(request.user and request.user.has_perm("training.view_cycle"))
        return bool(request.user and request.user.has_perm("training.start_cycle"))


CYCLE_ERRORS = error_responses({403: "Missing permission.", 409: "Another cycle is active, or this one ended."})


def _cycle(cycle_id: int) -> Cycle:
    cycle = (
        Cycle.objects.select_related("reward_run__output_version", "policy_run__output_version", "candidate")
        .select_related("canary__version", "requested_by")
        .filter(pk=cycle_id)
        .first()
    )
    if cycle is None:
        raise RunNotFound(f"Cycle {cycle_id} does not exist.")
    return cycle


class CycleCollectionApi(GenericAPIView):
    serializer_class = CycleSerializer
    permission_classes = [CanStartCycles]

    @extend_schema(
        operation_id="cycle_list",
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=Cycle.Status.values)],
        responses={200: CycleSerializer(many=True), **CYCLE_ERRORS},
    )
    def get(self, request: Request) -> Response:
        cycles = Cycle.objects.select_related(
            "reward_run__output_version", "policy_run__output_version", "candidate", "canary__version", "requested_by"
        ).order_by("-created_at", "-id")
        if status := choice_param(request, "status", Cycle.Status.values):
            cycles = cycles.filter(status=status)
        page = self.paginate_queryset(cycles)
        return self.get_paginated_response(
            CycleSerializer([cycle_service.cycle_report(c) for c in page], many=True).data
        )

    @extend_schema(
        operation_id="cycle_create",
        request=CycleInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: CycleSerializer, **CYCLE_ERRORS},
        description="Start an improvement cycle: feedback -> reward model -> policy -> gates -> approval -> canary.",
    )
    def post(self, request: Request) -> Response:
        serializer = CycleInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data

        def call() -> tuple[int, dict[str, Any]]:
            cycle = cycle_service.cycle_create(
                policy_kind=data.get("policy") or settings.CYCLE_POLICY_KIND,
                trigger=data["trigger"],
                requested_by=request.user,
                config=data["config"],
            )
            return 201, dict(CycleSerializer(cycle_service.cycle_report(_cycle(cycle.pk))).data)

        code, body = idempotent(
            user=request.user,
            scope="cycle",
            key=request.headers.get("Idempotency-Key"),
            payload=request.data,
            call=call,
        )
        return Response(body, status=code)


class CycleDetailApi(GenericAPIView):
    serializer_class = CycleSerializer
    permission_classes = [CanStartCycles]

    @extend_schema(operation_id="cycle_retrieve", responses={200: CycleSerializer, **CYCLE_ERRORS})
    def get(self, request: Request, cycle_id: int) -> Response:
        return Response(CycleSerializer(cycle_service.cycle_report(_cycle(cycle_id))).data)


class CycleCancelApi(GenericAPIView):
    serializer_class = CycleSerializer
    permission_classes = [CanStartCycles]

    @extend_schema(
        operation_id="cycle_cancel",
        request=None,
        responses={200: CycleSerializer, **CYCLE_ERRORS},
        description="Cancel an active cycle: its running stage stops and nothing it made is deployed.",
    )
    def post(self, request: Request, cycle_id: int) -> Response:
        cycle_service.cycle_cancel(cycle_id=cycle_id, reason=f"cancelled by {request.user.get_username()}")
        return Response(CycleSerializer(cycle_service.cycle_report(_cycle(cycle_id))).data)
