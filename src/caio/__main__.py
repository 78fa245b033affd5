"""``python -m caio``: the ``caio`` command."""

import sys

from caio.cli import main

sys.exit(main())
