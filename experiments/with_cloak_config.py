"""Run a ``media_cleaner`` command with the face cloak's engine settings changed: the figures of a setting that
is not the default, from the same ``evaluate-set`` or ``bench`` the default's figures come from.

    .venv/bin/python -m experiments.with_cloak_config '{"per_person_up_to": 0.3}' evaluate-set DIR [...]
    .venv/bin/python -m experiments.with_cloak_config '{"per_person_up_to": 0.3}' bench VIDEO [...]

The first argument is CloakConfig fields as JSON; the rest is a ``python -m media_cleaner`` command line. The
cloak is built in this process by those commands (``build_protectors``), so the changed defaults reach it; a
server's engine processes never see them.
"""
from __future__ import annotations

import functools
import json
import sys

from media_cleaner.protection.face_cloak import engine


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    overrides = json.loads(sys.argv[1])
    # FaceCloak and warm_up build ``CloakConfig()`` by name in the engine module: the changed defaults apply.
    engine.CloakConfig = functools.partial(engine.CloakConfig, **overrides)
    from media_cleaner.cli import main as cli_main
    return cli_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
