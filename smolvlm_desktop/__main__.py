"""`python -m smolvlm_desktop` is the same as the `smolvlm-desktop` command."""

import sys

from .cli import main

sys.exit(main())
