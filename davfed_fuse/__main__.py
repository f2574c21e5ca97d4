import sys

from davfed_fuse.cli import main

sys.exit(main())
