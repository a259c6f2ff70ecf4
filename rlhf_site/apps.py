from django.apps import AppConfig


class RlhfSiteConfig(AppConfig):
    name = "rlhf_site"
    verbose_name = "RLHF platform"

    def ready(self) -> None:
        from rlhf_site import checks  # noqa: F401  (registers the system checks)
