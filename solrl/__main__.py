"""`python -m solrl` = `python -m solrl.train`."""

import sys

from .train import main

sys.exit(main())
