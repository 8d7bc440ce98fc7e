"""`trading`: migrate, check, current, stamp, downgrade, revision, serve."""

from service_kit.service import service_main
from trading.app import SERVICE


def main() -> None:
    service_main(SERVICE)
