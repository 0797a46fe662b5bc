"""
The C{sql} checker plugin (C{--auth sql:ARGS}): passwords checked against
argon2 hashes in the C{users} table, so users can live in the same
database as their mail (SQLite or PostgreSQL, the store's argument string).
"""

import os
import sqlite3
from typing import Any, Generator, Optional, Tuple, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet import defer, threads
from twisted.plugin import IPlugin
from zope.interface import implementer

from mailplat.address import normalizeAddress
from mailplat.auth.passwd import _DUMMY_HASH, verifyPassword
from mailplat.errors import ConfigError, StoreError
from mailplat.store.sql.config import FORMAT, DatabaseSpec, parseDatabaseSpec
from mailplat.store.sql.database import SQLITE_BUSY_TIMEOUT, openSQLite, preparePostgres


class UserTable:
    """
    Reads password hashes from the C{users} table; every lookup opens its
    own short connection (logins are rare next to the argon2 work, and the
    checker has no shutdown hook to close a pool with).  Blocking: call
    from a thread.
    """

    def __init__(self, spec: DatabaseSpec, conninfo: Optional[str] = None) -> None:
        """
        @param spec: the database.
        @param conninfo: for PostgreSQL, the libpq string with the schema's
            search_path (L{PostgresDatabase.conninfo}).
        """
        self.spec = spec
        self.conninfo = conninfo

    def hashFor(self, address: str) -> Optional[str]:
        """
        The hash of an enabled user, or L{None}.

        @raise StoreError: the database failed.
        """
        query = "SELECT password_hash FROM users WHERE address = {p} AND enabled = 1"
        try:
            if self.spec.kind == "sqlite":
                conn: Any = sqlite3.connect(self.spec.path or "", timeout=SQLITE_BUSY_TIMEOUT)
                try:
                    row = conn.execute(query.format(p="?"), (address,)).fetchone()
                finally:
                    conn.close()
            else:
                import psycopg

                try:
                    with psycopg.connect(self.conninfo or "", connect_timeout=10) as conn:
                        row = conn.execute(query.format(p="%s"), (address,)).fetchone()
                except psycopg.Error as e:
                    raise StoreError(f"user lookup failed: {str(e).strip().splitlines()[0]}") from e
        except sqlite3.Error as e:
            raise StoreError(f"user lookup in {self.spec.path} failed: {e}") from e
        return None if row is None else row[0]


@implementer(ICredentialsChecker)
class SQLChecker:
    """
    Checks user names and passwords against a L{UserTable}; the lookup and
    the hashing run in the reactor's thread pool.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: UserTable) -> None:
        self.users = users

    def _check(self, address: str, password: bytes) -> bool:
        hashed = self.users.hashFor(address)
        ok = verifyPassword(hashed or _DUMMY_HASH, password)
        return ok and hashed is not None

    # The result type is ICredentialsChecker's (bytes, or () for anonymous).
    @defer.inlineCallbacks
    def requestAvatarId(self, credentials: IUsernamePassword) -> Generator["defer.Deferred[Any]", Any, Union[bytes, Tuple[()]]]:
        """
        See L{ICredentialsChecker.requestAvatarId}: fires with the normalised
        address (bytes) or fails with L{UnauthorizedLogin}.
        """
        # Twisted says bytes; protocols and tests give text as well.
        username: Union[bytes, str] = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        password: Union[bytes, str] = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        try:
            address = normalizeAddress(username)
        except Exception:
            raise UnauthorizedLogin("Authentication failed")
        ok = yield threads.deferToThread(self._check, address, password)
        if not ok:
            raise UnauthorizedLogin("Authentication failed")
        return address.encode("utf-8")


@implementer(ICheckerFactory, IPlugin)
class SQLCheckerFactory:
    """
    The C{--auth sql:ARGS} checker plugin.
    """

    authType = "sql"
    authHelp = (
        "Users in the 'users' table of the SQL store's database (argon2 hashes), SQLite or PostgreSQL; "
        "the tables are made if missing."
    )
    argStringFormat = FORMAT
    credentialInterfaces = SQLChecker.credentialInterfaces

    def defaultArguments(self, dataDir: str) -> str:
        """
        What an empty argument string means for a server whose data
        directory is C{dataDir}: the same SQLite file C{--store sql} uses.
        """
        return "sqlite:" + os.path.join(dataDir, "mailplat.sqlite3")

    def generateChecker(self, argstring: str = "") -> SQLChecker:
        """
        Make the checker; the database is opened and migrated once, now,
        so its tables exist.

        @raise ConfigError: bad arguments or an unusable database.
        """
        spec = parseDatabaseSpec(argstring, None, "--auth sql")
        conninfo = None
        try:
            if spec.kind == "sqlite":
                openSQLite(spec.path or "").close()
            else:
                conninfo, _ = preparePostgres(spec.dsn or "", spec.schema)
        except StoreError as e:
            raise ConfigError(f"--auth sql: {e}") from None
        return SQLChecker(UserTable(spec, conninfo))
