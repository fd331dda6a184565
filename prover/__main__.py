"""``python -m prover``: the same as ``vmu``."""

import sys

from .cli import main

sys.exit(main())
