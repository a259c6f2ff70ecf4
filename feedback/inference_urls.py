"""``/v1/``: the OpenAI-compatible inference API (``feedback.inference_api``). Not in the OpenAPI
schema: these are plain async Django views, and their shapes are OpenAI's."""

from django.urls import path, re_path

from feedback import inference_api

urlpatterns = [
    path("chat/completions", inference_api.chat_completions, name="v1-chat-completions"),
    path("models", inference_api.models, name="v1-models"),
    re_path(r"^(?P<rest>.*)$", inference_api.not_found),
]
