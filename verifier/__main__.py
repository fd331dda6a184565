"""``python -m verifier``: the same as ``vmu-verify``."""

import sys

from .cli import main

sys.exit(main())
