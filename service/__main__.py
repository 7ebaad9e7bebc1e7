"""`python -m service serve|worker|keys` (the same as `sdpo serve|worker|keys`)."""

import sys

from service.cli import main

sys.exit(main())
