import sys

from davfed_fuse.cli.main import main

sys.exit(main())
