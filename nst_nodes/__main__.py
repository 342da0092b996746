import sys

from .app import console

sys.exit(console())
