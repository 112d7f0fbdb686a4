import sys

from hyperion.cli import main

sys.exit(main())
