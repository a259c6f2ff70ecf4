from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from rlhf_site.login import admin_login_view, login_view
from rlhf_site.metrics import metrics_view
from rlhf_site.schema import SupabaseJWTScheme  # noqa: F401  (registers the scheme with drf-spectacular)

urlpatterns = [
    path("", include("feedback.page_urls")),
    # Before the stock views at the same paths: throttled sign-in (rlhf_site.login).
    path("accounts/login/", login_view, name="login"),
    path("admin/login/", admin_login_view),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/assistant/", include("feedback.urls")),
    path("api/training/", include("training.urls")),
    path("api/registry/", include("models_registry.urls")),
    path("v1/", include("feedback.inference_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("metrics", metrics_view, name="metrics"),
]

handler404 = "rlhf_site.views.not_found"
handler500 = "rlhf_site.views.server_error"
