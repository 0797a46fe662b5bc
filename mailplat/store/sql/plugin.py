"""
The C{sql} store plugin (C{--store sql[:ARGS]}).
"""

import os
from typing import Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from mailplat.errors import ConfigError, StoreError
from mailplat.interfaces import IStoreFactory
from mailplat.store.sql.config import FORMAT, DatabaseSpec, parseDatabaseSpec
from mailplat.store.sql.store import SQLStore


def openStore(spec: DatabaseSpec, what: str = "store 'sql'") -> SQLStore:
    """
    Open (creating and migrating) the store C{spec} names.

    @raise ConfigError: it cannot be opened; the message names the file,
        or the host and port, and why.
    """
    try:
        if spec.kind == "sqlite":
            assert spec.path is not None
            return SQLStore.sqlite(spec.path)
        assert spec.dsn is not None
        return SQLStore.postgresql(spec.dsn, spec.schema)
    except StoreError as e:
        raise ConfigError(f"{what}: {e}") from None


@implementer(IStoreFactory, IPlugin)
class SQLStoreFactory:
    """
    Makes a L{SQLStore} on SQLite (the default, in the data directory) or
    PostgreSQL.
    """

    storeName = "sql"
    storeHelp = (
        "Keeps accounts and mail in SQL: SQLite in the data directory (one machine), or PostgreSQL shared by "
        "several mailplat nodes (changes reach every node through LISTEN/NOTIFY). Message content is stored "
        "once however many mailboxes hold it."
    )
    argStringFormat = FORMAT

    def makeStore(self, argstring: str, dataDir: Optional[str]) -> SQLStore:
        """
        Make the store (see L{mailplat.store.sql.config} for C{argstring}).

        @raise ConfigError: bad arguments, or the database cannot be
            opened.
        """
        spec = parseDatabaseSpec(argstring, dataDir or ".")
        if spec.kind == "sqlite" and not argstring:
            try:
                os.makedirs(os.path.dirname(spec.path or "."), exist_ok=True)
            except OSError as e:
                raise ConfigError(f"store 'sql': cannot make the data directory {e.filename}: {e.strerror}") from None
        elif spec.kind == "sqlite" and not os.path.isdir(os.path.dirname(spec.path or ".")):
            raise ConfigError(f"store 'sql': the directory of {spec.path} does not exist")
        return openStore(spec)
