"""``python -m medhdm.cli``: the ``medhdm`` command."""

import sys

from .main import main

sys.exit(main())
