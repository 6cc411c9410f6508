#!/usr/bin/env python3
"""Media Cleaner client: a library and a command line for the Media Cleaner HTTP API.

This file is the entry point of the ``media_cleaner_client`` package in ``client-lib/`` (its docstring has the
library's and the command line's usage; ``pip install ./client-lib`` installs it alone, with ``httpx`` its
only dependency)::

    .venv/bin/python client.py protect in.mp4 -o out.mp4 --protection balanced
    .venv/bin/python client.py --help

    from client import MediaCleanerClient        # or: from media_cleaner_client import MediaCleanerClient
"""
from __future__ import annotations

import sys
import time  # noqa: F401  (the tests patch time.sleep through this module, as before the package)
from pathlib import Path

# A checkout runs the client from client-lib/ without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent / "client-lib"))

from media_cleaner_client import *  # noqa: F401,F403,E402
from media_cleaner_client.api import MediaCleanerClient, _content_disposition_filename  # noqa: F401,E402
from media_cleaner_client.cli import ProgressBar, main, verdict  # noqa: F401,E402
from media_cleaner_client.constants import *  # noqa: F401,F403,E402
from media_cleaner_client.errors import _parse_retry_after  # noqa: F401,E402

if __name__ == "__main__":
    sys.exit(main())
