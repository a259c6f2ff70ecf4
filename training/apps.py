from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import pre_delete


class TrainingConfig(AppConfig):
    name = "training"

    def ready(self) -> None:
        from training.erasure import on_user_pre_delete
        from training.panels import register_sections

        register_sections()
        # Any delete of a user is an erasure (training.erasure): rows, snapshots, the record.
        pre_delete.connect(on_user_pre_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="training.erasure")
