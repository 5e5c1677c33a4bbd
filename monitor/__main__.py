"""`python -m monitor ...` is the `margin-monitor` command."""

import sys

from monitor.cli import main

sys.exit(main())
