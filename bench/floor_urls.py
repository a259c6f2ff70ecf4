"""The project's URLs plus ``bench/floor``: one raw INSERT and nothing else (the benchmark's floor)."""

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from rlhf_site.urls import handler404, handler500  # noqa: F401
from rlhf_site.urls import urlpatterns as project_urlpatterns


@csrf_exempt
def floor(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_floor (body) VALUES (%s::jsonb)", [request.body.decode()])
    return JsonResponse({"ok": True}, status=201)


urlpatterns = [*project_urlpatterns, path("bench/floor", floor, name="bench-floor")]
