"""API keys: who is calling, and what they may see.

Keys are random tokens handed to people once; the server keeps only their SHA-256 (a key is 256 random bits,
so a fast hash is enough: there is nothing to brute-force). Each key maps to a user id and a role:
``user`` sees only their own tasks, ``admin`` sees all. Keys come from a file (one ``hash user role`` per
line, managed with ``python -m media_cleaner keys``) and/or the ``MEDIA_CLEANER_API_KEYS`` variable
(``hash:user:role`` separated by commas). With no keys configured the API is open, and the server should
stay on localhost.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

ROLES = ("user", "admin")
USER_ID = re.compile(r"^[\w.@-]{1,64}$")
KEY_PREFIX = "mc_"


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key."""

    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyConfigError(ValueError):
    """A keys file or variable that cannot be read; the message says where."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_entry(hashed: str, user_id: str, role: str, where: str) -> tuple[str, Principal]:
    if not re.fullmatch(r"[0-9a-f]{64}", hashed):
        raise KeyConfigError(f"{where}: the key hash must be 64 hex digits (sha256), got {hashed[:12]!r}…")
    if not USER_ID.match(user_id):
        raise KeyConfigError(f"{where}: user id {user_id!r} may only use letters, digits, '.', '_', '@', '-'")
    if role not in ROLES:
        raise KeyConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    return hashed, Principal(user_id, role)


class KeyRing:
    """The configured keys, by hash."""

    def __init__(self, entries: dict[str, Principal] | None = None):
        self._entries = dict(entries or {})

    @classmethod
    def load(cls, path: Path | None, inline: str | None) -> "KeyRing":
        entries: dict[str, Principal] = {}
        if path is not None:
            if not Path(path).exists():
                raise KeyConfigError(f"API keys file {path} does not exist (create one with "
                                f"`python -m media_cleaner keys add --user NAME --file {path}`)")
            for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    parts = line.split()
                    if len(parts) != 3:
                        raise KeyConfigError(f"{path}:{number}: expected 'sha256hex user role'")
                    hashed, principal = _parse_entry(*parts, where=f"{path}:{number}")
                    entries[hashed] = principal
        for item in filter(None, (part.strip() for part in (inline or "").split(","))):
            parts = item.split(":")
            if len(parts) != 3:
                raise KeyConfigError("MEDIA_CLEANER_API_KEYS: expected 'sha256hex:user:role' items separated by commas")
            hashed, principal = _parse_entry(*parts, where="MEDIA_CLEANER_API_KEYS")
            entries[hashed] = principal
        return cls(entries)

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal for ``key``, or None. Constant-time in the key's hash."""
        candidate = hash_key(key)
        for hashed, principal in self._entries.items():
            if hmac.compare_digest(candidate, hashed):
                return principal
        return None

    def principals(self) -> list[Principal]:
        return list(self._entries.values())


def add_key(path: Path, user_id: str, role: str = "user") -> str:
    """Create a key for ``user_id``, store its hash in ``path`` (atomically) and return the key itself."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    hashed, _ = _parse_entry(hash_key(key), user_id, role, where="new key")
    path = Path(path)
    existing = path.read_text(encoding="utf-8") if path.exists() else \
        "# Media Cleaner API keys: sha256(key) user role. Keys themselves are never stored.\n"
    if existing and not existing.endswith("\n"):
        existing += "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(existing + f"{hashed} {user_id} {role}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def revoke_user(path: Path, user_id: str) -> int:
    """Remove every key of ``user_id`` from ``path``; returns how many were removed."""
    path = Path(path)
    kept, removed = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) == 3 and fields[1] == user_id:
            removed += 1
        else:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return removed
