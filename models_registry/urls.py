from core.urls import slash_optional
from models_registry import api

urlpatterns = slash_optional(
    [
        ("versions", api.VersionCollectionApi, "registry-version-collection"),
        ("versions/<int:version_id>", api.VersionDetailApi, "registry-version-detail"),
        ("versions/<int:version_id>/approve", api.VersionApproveApi, "registry-version-approve"),
        ("versions/<int:version_id>/reject", api.VersionRejectApi, "registry-version-reject"),
        ("versions/<int:version_id>/deploy", api.VersionDeployApi, "registry-version-deploy"),
        ("versions/<int:version_id>/canary", api.VersionCanaryApi, "registry-version-canary"),
        ("kinds/<str:kind>/rollback", api.RollbackApi, "registry-rollback"),
        ("kinds/<str:kind>/canary/stop", api.CanaryStopApi, "registry-canary-stop"),
        ("kinds/<str:kind>/canary/promote", api.CanaryPromoteApi, "registry-canary-promote"),
        ("events", api.EventListApi, "registry-event-list"),
        ("canaries", api.CanaryListApi, "registry-canary-list"),
    ]
)
