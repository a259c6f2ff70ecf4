from core.urls import slash_optional
from training import api

urlpatterns = slash_optional(
    [
        ("runs", api.TrainingRunCollectionApi, "training-run-collection"),
        ("runs/<int:run_id>", api.TrainingRunDetailApi, "training-run-detail"),
        ("runs/<int:run_id>/cancel", api.TrainingRunCancelApi, "training-run-cancel"),
        ("cycles", api.CycleCollectionApi, "cycle-collection"),
        ("cycles/<int:cycle_id>", api.CycleDetailApi, "cycle-detail"),
        ("cycles/<int:cycle_id>/cancel", api.CycleCancelApi, "cycle-cancel"),
    ]
)
