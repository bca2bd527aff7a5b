"""`python -m edge.cli` is `sonoedge`."""

import sys

from edge.cli.main import main

sys.exit(main())
