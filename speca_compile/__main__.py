"""``python -m speca_compile`` is the ``speca`` command (works where scripts are not on PATH)."""

import sys

from speca_compile.cli import main

sys.exit(main())
