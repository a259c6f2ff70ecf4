from django.urls import path

from training import api

routes = [
    ("runs", api.TrainingRunCollectionApi, "training-run-collection"),
    ("runs/<int:run_id>", api.TrainingRunDetailApi, "training-run-detail"),
    ("runs/<int:run_id>/cancel", api.TrainingRunCancelApi, "training-run-cancel"),
]

urlpatterns = [path(route, view.as_view(), name=name) for route, view, name in routes] + [
    path(f"{route}/", view.as_view()) for route, view, _ in routes
]
