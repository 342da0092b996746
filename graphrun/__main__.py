import sys

from graphrun.cli import console

sys.exit(console())
