"""`platform-db`: the migration commands of the shared auth tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from platform_db.trees import PLATFORM
from service_kit.cli import main_for

# Installed packages may add subcommands here (the dev tools add `dev`).
PLUGINS = "platform_db.commands"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(
        main_for(PLATFORM, "Migrations of the shared auth tables.", argv=argv, plugins=PLUGINS)
    )
