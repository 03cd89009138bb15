"""``python -m nemo_aesthetic.cli``: the same as the ``nemo-aesthetic`` console script."""
import sys

from nemo_aesthetic.cli import main

sys.exit(main())
