import sys

from .runner import main_worker

sys.exit(main_worker())
