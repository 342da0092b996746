import sys

from graphrun.cli import main

sys.exit(main())
