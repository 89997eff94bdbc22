"""`python -m sphinxx` is the same as the `sphinxx` command."""

import sys

from sphinxx.cli import main

sys.exit(main())
