"""Users and their credential (email and password) accounts, as better-auth stores them."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from platform_auth.cache import SessionCache
from platform_auth.tokens import generate_id
from platform_db.models import Account, User
from service_kit.types import utcnow

CREDENTIAL_PROVIDER = "credential"


async def find_user_by_email(db: AsyncSession, email: str) -> User | None:
    return (await db.execute(select(User).where(col(User.email) == email))).scalar_one_or_none()


async def credential_account(db: AsyncSession, user_id: str) -> Account | None:
    stmt = select(Account).where(
        col(Account.user_id) == user_id, col(Account.provider_id) == CREDENTIAL_PROVIDER
    )
    return (await db.execute(stmt)).scalars().first()


def new_credential_account(user_id: str, password_hash: str) -> Account:
    now = utcnow()
    return Account(
        id=generate_id(),
        account_id=user_id,
        provider_id=CREDENTIAL_PROVIDER,
        user_id=user_id,
        password=password_hash,
        created_at=now,
        updated_at=now,
    )


async def set_password(db: AsyncSession, user_id: str, password_hash: str) -> None:
    """Store a new password hash, creating the credential account if the user has none."""
    account = await credential_account(db, user_id)
    if account is None:
        db.add(new_credential_account(user_id, password_hash))
    else:
        account.password, account.updated_at = password_hash, utcnow()
    await db.flush()


async def password_is_current(db: AsyncSession, user_id: str, password_hash: str) -> bool:
    """Whether `password_hash` is still the user's password, locking it until commit.

    Sign-in verifies a password, then creates a session; a reset or change committing in
    between must win. FOR SHARE waits for a pending change (and then sees the new hash), and
    holds a change back until this transaction's session is committed, so the change's
    "end every session" sees it.
    """
    stmt = (
        select(col(Account.id))
        .where(
            col(Account.user_id) == user_id,
            col(Account.provider_id) == CREDENTIAL_PROVIDER,
            col(Account.password) == password_hash,
        )
        .with_for_update(read=True)
    )
    return (await db.execute(stmt)).first() is not None


async def replace_password(
    db: AsyncSession, user_id: str, current_hash: str, new_hash: str
) -> bool:
    """Compare and set: store `new_hash` only if `current_hash` is still the password."""
    result = await db.execute(
        update(Account)
        .where(
            col(Account.user_id) == user_id,
            col(Account.provider_id) == CREDENTIAL_PROVIDER,
            col(Account.password) == current_hash,
        )
        .values(password=new_hash, updated_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def mark_email_verified(
    db: AsyncSession, user_id: str, *, cache: SessionCache | None = None
) -> bool:
    """Set the flag; `cache`: this process's cached copies of the user go at once."""
    result = await db.execute(
        update(User).where(col(User.id) == user_id).values(email_verified=True, updated_at=utcnow())
    )
    if cache is not None:
        cache.evict_user(user_id)
    return bool(result.rowcount)  # type: ignore[attr-defined]
