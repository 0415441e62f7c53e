"""API keys and principals: who is calling, and what they may see."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.models import ApiKey
from app.repositories.keys import ApiKeyRepository

TOKEN_PREFIX = "td_"
LOCAL_OWNER = "local"


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str
    admin: bool

    def can_see(self, owner: str) -> bool:
        return self.admin or owner == self.owner

    @property
    def owner_filter(self) -> str | None:
        """The owner to filter listings by; None for an admin, who sees everything."""
        return None if self.admin else self.owner


# Without keys on a loopback-only service, the caller is the machine's own user.
LOCAL_PRINCIPAL = Principal(owner=LOCAL_OWNER, admin=True)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keys_required(mode: str, listen_host: str, *, keys_ever_created: bool) -> bool:
    """Whether a request without a key is refused. Fails closed: nothing in the key table can
    open a service that was closed.

    `required`: always. `disabled`: never (the service refuses to start with it beyond
    loopback). `auto`: always on an address beyond loopback, whatever the key table holds;
    on loopback once any key was ever created, revoked keys included, so revoking the last
    key never turns every caller into the local admin.
    """
    if mode == "required":
        return True
    if mode == "disabled":
        return False
    return keys_ever_created or not is_loopback(listen_host)


class AccessPolicy:
    """Whether a request without a key is refused (`keys_required`), for one process.

    A key is never deleted, so once one was seen the answer stays yes: only a service that has
    never seen a key reads the table, on each anonymous request, so a key the CLI made a moment
    ago closes it for the very next request (no cache that can be stale)."""

    def __init__(self, mode: str, listen_host: str) -> None:
        self.mode = mode
        self.listen_host = listen_host
        self._keys_seen = False

    async def keys_created(self, session: AsyncSession) -> bool:
        if not self._keys_seen:
            self._keys_seen = await ApiKeyRepository(session).any_created()
        return self._keys_seen

    async def key_required(self, session: AsyncSession) -> bool:
        if keys_required(self.mode, self.listen_host, keys_ever_created=self._keys_seen):
            return True
        return keys_required(
            self.mode, self.listen_host, keys_ever_created=await self.keys_created(session)
        )


async def create_key(session: AsyncSession, owner: str, *, admin: bool) -> tuple[ApiKey, str]:
    """A new key; the token is returned once and only its SHA-256 is stored."""
    if not owner or len(owner) > 100 or not owner.replace("-", "").replace("_", "").isalnum():
        raise ValueError("owner must be 1-100 letters, digits, '-' or '_'")
    if owner == LOCAL_OWNER:
        # The owner of requests without a key (the machine's own user): a key for it would
        # inherit what only the local user may do, such as any bucket without an allow-list.
        raise ValueError(f"owner {LOCAL_OWNER!r} is reserved for requests without a key")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        owner=owner,
        token_sha256=token_digest(token),
        token_prefix=token[:10],
        admin=admin,
        created_at=utcnow(),
    )
    ApiKeyRepository(session).add(key)
    await session.flush()
    return key, token


async def principal_for(session: AsyncSession, token: str) -> Principal | None:
    key = await ApiKeyRepository(session).by_hash(token_digest(token))
    if key is None or key.revoked_at is not None:
        return None
    return Principal(owner=key.owner, admin=key.admin)
