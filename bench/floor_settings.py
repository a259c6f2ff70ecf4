"""Settings for the load benchmark: the project's settings, plus the ``bench/floor`` endpoint.

Both benchmark targets (the feedback API and the floor) are served under these settings, so the
only difference between the two runs is the endpoint.
"""

from rlhf_site.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor_urls"
