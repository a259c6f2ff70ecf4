"""The Celery app. Apps declare tasks with ``shared_task``; this module only wires them up."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_site.settings")
# Progress bars of dataset tokenisation are noise in a worker's log; runs report progress on their row.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

app = Celery("rlhf_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
