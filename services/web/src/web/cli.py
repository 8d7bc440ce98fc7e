"""`web`: migrate, check, current, stamp, downgrade, revision, serve."""

from platform_db.service import service_main
from web.app import SERVICE


def main() -> None:
    service_main(SERVICE)
