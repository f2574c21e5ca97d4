"""``python -m davfed_fuse.testfed DATA_DIR --port PORT [...]``: same as ``davfed testfed``."""

import sys

from davfed_fuse.testfed.cli import main

sys.exit(main(sys.argv[1:]))
