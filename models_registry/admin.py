from django.contrib import admin

from models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "number", "status", "backend", "artifact_path", "deployed_at", "created_at"]
    list_filter = ["kind", "status", "backend"]
    search_fields = ["artifact_path", "model_name"]
    list_select_related = ["parent"]
    readonly_fields = ["created_at", "deployed_at", "checksums", "load_error"]
