"""Where profiles are kept: one sqlite file, keyed by function, code version and GPU model.

The path is ``--store PATH``, else ``$GPUSLICE_PROFILE_STORE``, else ``profiles.sqlite`` in the
user's cache directory (``platformdirs.user_cache_path("gpuslice")``, e.g.
``~/.cache/gpuslice`` on Linux). Put it on a shared file system to share profiles across a
cluster: the store keeps sqlite's default rollback journal, because "WAL does not work over a
network filesystem" (https://www.sqlite.org/wal.html), opens a connection per operation, keeps
transactions short and waits up to :data:`BUSY_TIMEOUT_S` for another writer's lock. (sqlite
relies on the file system's POSIX locks; NFS implementations with broken locking are a known
hazard, https://www.sqlite.org/faq.html#q5 : keep one writer at a time there.)

A profile is found again only for the same qualified name, the same code hash and the same
GPU model. Anything else is a *miss*, and :meth:`ProfileStore.lookup` says which kind: never
profiled, profiled on another GPU model, or profiled when the code was different.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gpuslice.errors import UsageError
from gpuslice.rightsize.identity import FunctionId

if TYPE_CHECKING:
    from gpuslice.rightsize.profile import Profile

__all__ = ["BUSY_TIMEOUT_S", "STORE_ENV", "Lookup", "ProfileStore", "default_store_path"]

#: Environment variable naming the store file.
STORE_ENV = "GPUSLICE_PROFILE_STORE"
#: Seconds a connection waits for another process's lock before giving up.
BUSY_TIMEOUT_S = 30.0
#: ``PRAGMA user_version`` of the schema below.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    function  TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    created   TEXT NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (function, code_hash, gpu_model)
)
"""


def default_store_path() -> Path:
    """``$GPUSLICE_PROFILE_STORE``, else ``profiles.sqlite`` in the user's cache directory."""
    override = os.environ.get(STORE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("gpuslice") / "profiles.sqlite"


@dataclass(frozen=True)
class Lookup:
    """What the store had for a function on a GPU model.

    Attributes:
        status: ``hit``, or the kind of miss: ``never`` (not profiled), ``code-changed``
            (profiled, but its code was different), ``other-gpu`` (profiled on other GPU
            models only).
        profile: the profile on a hit, else None.
        reason: one sentence for people.
    """

    status: Literal["hit", "never", "code-changed", "other-gpu"]
    profile: Profile | None
    reason: str

    @property
    def hit(self) -> bool:
        """True when a valid profile was found."""
        return self.status == "hit"


class ProfileStore:
    """Profiles in one sqlite file.

    Args:
        path: the file (created with its folder on first write); default
            :func:`default_store_path`.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()

    def __repr__(self) -> str:
        return f"ProfileStore({str(self.path)!r})"

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UsageError(
                    f"cannot create the profile store's folder {self.path.parent} ({err}); "
                    f"pass --store PATH or set {STORE_ENV} to a writable file"
                ) from err
        # A store that does not exist yet reads as empty (and is not created by reading).
        target = str(self.path) if write or self.path.exists() else ":memory:"
        try:
            connection = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as err:
            raise UsageError(
                f"cannot open the profile store {self.path} ({err}); pass --store PATH or set "
                f"{STORE_ENV} to another file"
            ) from err
        with closing(connection):
            try:
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise UsageError(
                        f"profile store {self.path} has schema version {version}, this gpuslice "
                        f"reads {SCHEMA_VERSION}; use another --store file"
                    )
                with connection:  # one short transaction
                    connection.execute(_SCHEMA)
                    if version == 0:
                        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    yield connection
            except sqlite3.DatabaseError as err:
                raise UsageError(
                    f"{self.path} is not a usable profile store ({err}); delete it or pass "
                    "another --store file"
                ) from err

    def put(self, profile: Profile) -> None:
        """Keep ``profile``, replacing one with the same function, code hash and GPU model."""
        with self._connect(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?, ?)",
                (
                    profile.function,
                    profile.code_hash,
                    profile.gpu_model,
                    profile.created,
                    json.dumps(profile.to_dict()),
                ),
            )

    def lookup(self, function: FunctionId, gpu_model: str) -> Lookup:
        """The profile of this function version on this GPU model, or why there is none."""
        from gpuslice.rightsize.profile import Profile

        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT code_hash, gpu_model, created, data FROM profiles WHERE function = ? "
                "ORDER BY created DESC",
                (function.name,),
            ).fetchall()
        for code_hash, model, _, data in rows:
            if code_hash == function.code_hash and model == gpu_model:
                profile = Profile.from_dict(json.loads(data))
                return Lookup("hit", profile.stored(), f"profiled on {profile.created}")
        if not rows:
            return Lookup("never", None, f"{function.name} was never profiled")
        same_code = [r for r in rows if r[0] == function.code_hash]
        if same_code:
            models = sorted({r[1] for r in same_code})
            return Lookup(
                "other-gpu",
                None,
                f"{function.name} was profiled on {', '.join(models)}, not on {gpu_model}",
            )
        newest = rows[0]
        return Lookup(
            "code-changed",
            None,
            f"{function.name} changed since its profile of {newest[2]} "
            f"(code {newest[0]}, now {function.code_hash})",
        )

    def for_code(self, function: FunctionId) -> list[Profile]:
        """Every profile of this function version (one per GPU model), newest first."""
        from gpuslice.rightsize.profile import Profile

        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT data FROM profiles WHERE function = ? AND code_hash = ? "
                "ORDER BY created DESC",
                (function.name, function.code_hash),
            ).fetchall()
        return [Profile.from_dict(json.loads(data)).stored() for (data,) in rows]

    def all(self) -> list[Profile]:
        """Every profile in the store, newest first."""
        from gpuslice.rightsize.profile import Profile

        with self._connect(write=False) as db:
            rows = db.execute("SELECT data FROM profiles ORDER BY created DESC").fetchall()
        return [Profile.from_dict(json.loads(data)).stored() for (data,) in rows]
