"""Simulated users with a hidden preference, and the experiment that shows the loop improving the
model for them (``manage.py simulate_users``): ``users`` drives them through the real interfaces,
``experiment`` runs the scenarios and reports."""
