"""``python -m davfed_testfed DATA_DIR --port PORT [...]``: same as ``davfed testfed``."""

import sys

from davfed_testfed.cli import main

sys.exit(main(sys.argv[1:]))
