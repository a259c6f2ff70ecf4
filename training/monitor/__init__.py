"""The monitor: watches every policy version that serves, and promotes, stops, keeps or rolls back.

``stats`` holds the sequential test (no Django); ``service`` reads the ratings, decides, stores each
decision and makes the registry change it calls for. A beat task runs a pass every
``MONITOR_EVERY_SECONDS``; ``python manage.py monitor_versions`` runs one now.
"""
