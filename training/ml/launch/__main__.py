"""``python -m training.ml.launch``: a rank, or the ``--agent`` step (``training.ml.launch.rank.main``)."""

import sys

from training.ml.launch.rank import main

sys.exit(main())
