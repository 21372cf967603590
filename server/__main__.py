import sys

from server.entry.cli import main

sys.exit(main())
