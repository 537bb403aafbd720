"""``python -m embeddable_db.cli``."""

import sys

from . import main, quit_on_ctrl_c

quit_on_ctrl_c()
sys.exit(main())
