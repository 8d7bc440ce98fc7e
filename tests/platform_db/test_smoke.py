from platform_db import migrate
from platform_db.trees import PLATFORM


async def test_db_url_is_at_head(db_url: str) -> None:
    assert await migrate.current(PLATFORM, db_url) == PLATFORM.heads()


async def test_empty_db_has_no_revision(empty_db: str) -> None:
    assert await migrate.current(PLATFORM, empty_db) == ()
