import sys

from media_cleaner.cli import main

sys.exit(main())
