"""`python -m loomlm.runtime.server [flags]`: the same as `loomlm serve`."""

import sys

from loomlm.runtime.server.launch import main

sys.exit(main())
