import sys

from pgolf_core.cli import main

sys.exit(main())
