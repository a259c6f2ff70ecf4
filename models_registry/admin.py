from django.contrib import admin

from models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "kind", "number", "status", "artifact_path", "created_at"]
    list_filter = ["kind", "status"]
    search_fields = ["artifact_path"]
    readonly_fields = ["created_at"]
