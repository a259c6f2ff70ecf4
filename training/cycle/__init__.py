"""The improvement cycle: feedback -> reward model -> policy -> gates -> candidate -> approval -> canary
-> the monitor's decision, as one thing an operator can start, schedule, follow and trust.

``gates`` holds the gate rules (no database); ``service`` creates cycles and moves them from stage to
stage; the Celery tasks ``training.tasks.cycle_advance`` (sent when a stage's run ends) and
``training.tasks.cycles_sweep`` (beat: approvals, canary outcomes, schedules) drive it.
"""
