import sys

from .runner import main_serve

sys.exit(main_serve())
