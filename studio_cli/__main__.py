"""``python -m studio_cli ...`` (what ``accelerate launch -m studio_cli`` runs): the ``studio`` command."""

import sys

from studio_cli import main

sys.exit(main())
