"""
The directory kept in the SQL store's database: virtual domains, aliases
(catch-alls included) and moved addresses in the C{domains}, C{aliases} and
C{moved} tables, for SQLite and PostgreSQL.

L{SQLDirectoryFile} has the API of L{mailplat.delivery.directory.DirectoryFile},
so L{mailplat.delivery.directory.StoreDirectory} and the C{mailplat
domain|alias} commands use either.  L{directoryFor} picks one from the
store's spec, the way L{mailplat.queue.sql.queueFor} picks the queue.

Every change increases C{directory_serial.serial} in its transaction; every
read first reads that one integer and loads the three tables again only
when it changed, so a running server sees the admin command's changes at
once for the price of one indexed single-row query per lookup.  The
connection is blocking (like reading the directory file) and used only
from the thread that calls it.
"""

import os
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union

from mailplat.address import normalizeAddress, splitAddress
from mailplat.delivery.directory import DirectoryFile, _validAddress, _validDomain
from mailplat.errors import ConfigError, StoreError
from mailplat.store.sql.config import DatabaseSpec, parseDatabaseSpec
from mailplat.store.sql.database import _advisoryKey, openSQLite, preparePostgres
from mailplat.store.sql.schema import (
    DIRECTORY_LATEST_VERSION,
    DIRECTORY_MIGRATIONS,
    DIRECTORY_VERSION_TABLE,
    POSTGRESQL,
    SQLITE,
)

_T = TypeVar("_T")


class SQLDirectoryFile:
    """
    The virtual domains, aliases and moved addresses of the store's
    database, with the methods of L{DirectoryFile}.

    @ivar spec: the database.
    @ivar description: names the database in messages (never a password).
    """

    def __init__(self, spec: DatabaseSpec) -> None:
        """
        Open the database, bringing the store's schema and the directory's
        own tables (L{DIRECTORY_MIGRATIONS}) up to date.  Blocking.

        @raise StoreError: the database cannot be opened or migrated, or
            its directory tables are newer than this code.
        """
        self.spec = spec
        self._conn: Any = None
        self._conninfo: Optional[str] = None
        self._serial: Optional[int] = None
        self._domains: List[str] = []
        self._aliases: Dict[str, List[str]] = {}
        self._moved: Dict[str, str] = {}
        if spec.kind == "sqlite":
            self.description = f"SQLite database {spec.path}"
        else:
            self._conninfo, self.description = preparePostgres(spec.dsn or "", spec.schema)
        self._connect()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # The connection.

    def _connect(self) -> None:
        if self.spec.kind == "sqlite":
            self._conn = openSQLite(self.spec.path or "")
        else:
            import psycopg

            try:
                self._conn = psycopg.connect(self._conninfo or "", autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise StoreError(f"Cannot connect to {self.description}: {_firstLine(e)}") from e

    def _migrate(self) -> None:
        """
        Apply the directory's pending migrations, one process at a time
        (SQLite's write lock; a PostgreSQL advisory lock per schema).
        """
        dialect = SQLITE if self.spec.kind == "sqlite" else POSTGRESQL

        def work(execute: Callable[..., Any]) -> None:
            if dialect is POSTGRESQL:
                execute("SELECT pg_advisory_xact_lock(?)", (_advisoryKey("directory:" + (self.spec.schema or ""), -1),))
            execute(dialect.render(DIRECTORY_VERSION_TABLE))
            current = execute("SELECT COALESCE(MAX(version), 0) FROM directory_schema_version").fetchone()[0]
            if current > DIRECTORY_LATEST_VERSION:
                raise StoreError(
                    f"{self.description} has directory schema version {current}, newer than the"
                    f" {DIRECTORY_LATEST_VERSION} this mailplat knows; run a newer mailplat"
                )
            for version, statements in DIRECTORY_MIGRATIONS:
                if version > current:
                    for statement in statements:
                        execute(dialect.render(statement))
                    execute("INSERT INTO directory_schema_version (version, applied) VALUES (?, ?)", (version, time.time()))

        self._transaction(work, write=True)

    def close(self) -> None:
        """
        Close the connection (a later call connects again).
        """
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _sql(self, statement: str) -> str:
        return statement if self.spec.kind == "sqlite" else statement.replace("?", "%s")

    def _transaction(self, work: Callable[[Callable[..., Any]], _T], write: bool) -> _T:
        """
        Run C{work} in one transaction; it gets C{execute(sql, params)}
        (C{?} markers) returning a cursor.  A lost PostgreSQL connection is
        opened again and, for reading only, the work tried once more (a
        write may have committed before the connection went).

        @raise StoreError: the database failed.
        """
        if self.spec.kind == "sqlite":
            if self._conn is None:
                self._connect()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = work(lambda q, p=(): conn.execute(q, p))
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as e:
                raise StoreError(f"directory in {self.description} failed: {e}") from e
        import psycopg

        for attempt in (1, 2):
            try:
                if self._conn is None or self._conn.closed:
                    self._connect()
                conn = self._conn
                with conn.transaction():
                    return work(lambda q, p=(): conn.execute(self._sql(q), p))
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                self.close()
                if attempt == 2 or write:
                    raise StoreError(f"directory in {self.description} failed: {_firstLine(e)}") from e
            except psycopg.Error as e:
                raise StoreError(f"directory in {self.description} failed: {_firstLine(e)}") from e
        raise AssertionError("unreachable")

    # Reading.

    def _load(self) -> None:
        def read(execute: Callable[..., Any]) -> None:
            serial = execute("SELECT serial FROM directory_serial WHERE id = 1").fetchone()[0]
            if serial == self._serial:
                return
            domains = [row[0] for row in execute("SELECT name FROM domains").fetchall()]
            aliases: Dict[str, List[str]] = {}
            for address, target in execute("SELECT address, target FROM aliases ORDER BY address, position, target"):
                aliases.setdefault(address, []).append(target)
            moved = dict(execute("SELECT address, target FROM moved").fetchall())
            self._domains, self._aliases, self._moved, self._serial = domains, aliases, moved, serial

        self._transaction(read, write=False)

    def domains(self) -> List[str]:
        """
        The virtual domains, sorted.
        """
        self._load()
        return sorted(self._domains)

    def aliases(self) -> Dict[str, List[str]]:
        """
        Every alias (C{@domain} for a catch-all) and its targets.
        """
        self._load()
        return {k: list(v) for k, v in self._aliases.items()}

    def lookup(self, key: str) -> Optional[List[str]]:
        """
        The targets of alias C{key} (normalised), or L{None}.
        """
        self._load()
        targets = self._aliases.get(key)
        return list(targets) if targets is not None else None

    def movedTo(self, address: str) -> Optional[str]:
        """
        The new address of C{address} (normalised) when it has moved, else
        L{None}.
        """
        self._load()
        return self._moved.get(address)

    def listMoved(self) -> List[Tuple[str, str]]:
        """
        Every moved address with its new address, sorted.
        """
        self._load()
        return sorted(self._moved.items())

    def listDomains(self) -> List[str]:
        """
        Same as L{domains}.
        """
        return self.domains()

    def listAliases(self) -> List[Tuple[str, List[str]]]:
        """
        Every alias with its targets, sorted by alias.
        """
        aliases = self.aliases()
        return [(k, aliases[k]) for k in sorted(aliases)]

    # Changing.

    def _change(self, work: Callable[[Callable[..., Any]], _T]) -> _T:
        """
        Run C{work} in a writing transaction that first increases the
        serial (which also makes concurrent writers wait for each other on
        PostgreSQL).
        """

        def inner(execute: Callable[..., Any]) -> _T:
            execute("UPDATE directory_serial SET serial = serial + 1 WHERE id = 1")
            return work(execute)

        return self._transaction(inner, write=True)

    def addDomain(self, domain: str) -> str:
        """
        Make C{domain} a virtual domain of this server.

        @return: the normalised domain.
        @raise ConfigError: not a domain, or already there.
        """
        d = _validDomain(domain)

        def work(execute: Callable[..., Any]) -> None:
            if execute("SELECT 1 FROM domains WHERE name = ?", (d,)).fetchone() is not None:
                raise ConfigError(f"domain {d} exists already")
            execute("INSERT INTO domains (name) VALUES (?)", (d,))

        self._change(work)
        return d

    def removeDomain(self, domain: str) -> str:
        """
        Remove a virtual domain and every alias in it.

        @raise ConfigError: no such domain.
        """
        d = _validDomain(domain)

        def work(execute: Callable[..., Any]) -> None:
            if execute("SELECT 1 FROM domains WHERE name = ?", (d,)).fetchone() is None:
                raise ConfigError(f"{d}: no such domain")
            execute("DELETE FROM domains WHERE name = ?", (d,))
            keys = [row[0] for row in execute("SELECT DISTINCT address FROM aliases").fetchall()]
            for key in keys:
                if splitAddress(key)[1] == d:
                    execute("DELETE FROM aliases WHERE address = ?", (key,))

        self._change(work)
        return d

    def addAlias(self, alias: str, targets: Iterable[str]) -> List[str]:
        """
        Add targets to an alias (created when new).  C{@domain} is the
        domain's catch-all.

        @return: the alias's targets now.
        @raise ConfigError: a bad address, or no target.
        """
        key = _validAddress(alias, allowCatchAll=True)
        new = [_validAddress(t) for t in targets]
        if not new:
            raise ConfigError(f"alias {key} needs at least one target")

        def work(execute: Callable[..., Any]) -> List[str]:
            rows = execute("SELECT target, position FROM aliases WHERE address = ? ORDER BY position, target", (key,)).fetchall()
            current = [row[0] for row in rows]
            position = max((row[1] for row in rows), default=0)
            for t in new:
                if t not in current:
                    position += 1
                    execute("INSERT INTO aliases (address, target, position) VALUES (?, ?, ?)", (key, t, position))
                    current.append(t)
            return current

        return self._change(work)

    def removeAlias(self, alias: str, target: Optional[str] = None) -> None:
        """
        Remove one target of an alias (the alias goes with its last
        target), or the whole alias when C{target} is L{None}.

        @raise ConfigError: no such alias or target.
        """
        key = _validAddress(alias, allowCatchAll=True)

        def work(execute: Callable[..., Any]) -> None:
            if execute("SELECT 1 FROM aliases WHERE address = ?", (key,)).fetchone() is None:
                raise ConfigError(f"{key}: no such alias")
            if target is None:
                execute("DELETE FROM aliases WHERE address = ?", (key,))
                return
            t = normalizeAddress(target)
            if execute("DELETE FROM aliases WHERE address = ? AND target = ?", (key, t)).rowcount == 0:
                raise ConfigError(f"{key}: {t} is not one of its targets")

        self._change(work)

    def setMoved(self, address: str, newAddress: str) -> str:
        """
        Mark C{address} as moved to C{newAddress} (replacing an earlier
        setting).

        @return: the normalised new address.
        @raise ConfigError: a bad address, or an address moved to itself.
        """
        key = _validAddress(address)
        target = _validAddress(newAddress)
        if key == target:
            raise ConfigError(f"{key} cannot move to itself")

        def work(execute: Callable[..., Any]) -> None:
            execute("DELETE FROM moved WHERE address = ?", (key,))
            execute("INSERT INTO moved (address, target) VALUES (?, ?)", (key, target))

        self._change(work)
        return target

    def removeMoved(self, address: str) -> None:
        """
        Forget that C{address} moved.

        @raise ConfigError: it is not marked as moved.
        """
        key = _validAddress(address)

        def work(execute: Callable[..., Any]) -> None:
            if execute("DELETE FROM moved WHERE address = ?", (key,)).rowcount == 0:
                raise ConfigError(f"{key}: not marked as moved")

        self._change(work)


def _firstLine(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def directoryFor(storeSpec: str, dataDir: str) -> Union[DirectoryFile, SQLDirectoryFile]:
    """
    The directory of a server whose store is C{storeSpec} (C{NAME[:ARGS]},
    as C{--store}): the store's own database (SQLite or PostgreSQL, schema
    included) for C{sql...}; else the file C{<dataDir>/directory.json}.

    @raise ConfigError: the store's arguments are bad, or the database
        cannot be opened.
    """
    name, _, args = storeSpec.partition(":")
    if name == "sql":
        spec = parseDatabaseSpec(args, dataDir)
        try:
            return SQLDirectoryFile(spec)
        except StoreError as e:
            raise ConfigError(f"directory on store 'sql': {e}") from None
    return DirectoryFile(os.path.join(dataDir, "directory.json"))
