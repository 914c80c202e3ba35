"""`python -m loomlm ...` is the `loomlm` command."""

import sys

from loomlm.runtime.cli import main

sys.exit(main())
