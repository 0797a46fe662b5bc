"""
The argument string of the C{sql} store and checker plugins::

    (empty)                      SQLite at <data-dir>/mailplat.sqlite3
    sqlite:PATH                  SQLite at PATH
    postgresql://USER@HOST:PORT/DB[?schema=NAME&...]
                                 PostgreSQL; C{schema} picks a schema (made
                                 if missing), other parameters go to libpq
"""

import os
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mailplat.errors import ConfigError

DEFAULT_FILE = "mailplat.sqlite3"

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

FORMAT = (
    "Empty for SQLite at <data-dir>/mailplat.sqlite3; 'sqlite:PATH'; or a PostgreSQL URL "
    "'postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]'."
)


@dataclass(frozen=True)
class DatabaseSpec:
    """
    Which database an argument string names.

    @ivar kind: C{"sqlite"} or C{"postgresql"}.
    @ivar path: the SQLite file (absolute), for C{"sqlite"}.
    @ivar dsn: the libpq URL without C{schema}, for C{"postgresql"}.
    @ivar schema: the PostgreSQL schema, or L{None}.
    """

    kind: str
    path: Optional[str] = None
    dsn: Optional[str] = None
    schema: Optional[str] = None


def checkSchemaName(schema: str) -> str:
    """
    Refuse a schema name that is not a plain lower-case identifier (it goes
    into C{search_path} and the notification channel's name).

    @raise ConfigError: with the reason.
    """
    if not _SCHEMA.match(schema):
        raise ConfigError(
            f"PostgreSQL schema {schema!r} must be lower-case letters, digits and '_' (not first), at most 63"
        )
    return schema


def parseDatabaseSpec(argstring: str, dataDir: Optional[str], what: str = "store 'sql'") -> DatabaseSpec:
    """
    Read the argument string of the store or checker plugin.

    @param dataDir: where the default SQLite file lives; L{None} when
        there is no default (the checker), so an empty string is refused.
    @raise ConfigError: the string is none of the accepted forms.
    """
    if not argstring:
        if dataDir is None:
            raise ConfigError(f"{what} needs 'sqlite:PATH' or a postgresql:// URL")
        return DatabaseSpec("sqlite", path=os.path.abspath(os.path.join(dataDir, DEFAULT_FILE)))
    if argstring.startswith("sqlite:"):
        path = argstring[len("sqlite:"):]
        if not path:
            raise ConfigError(f"{what}: 'sqlite:' needs the database file's path")
        return DatabaseSpec("sqlite", path=os.path.abspath(path))
    if argstring.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(argstring)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [value for key, value in query if key == "schema"]
        rest = [(key, value) for key, value in query if key != "schema"]
        if len(schemas) > 1:
            raise ConfigError(f"{what}: give 'schema' once in the PostgreSQL URL")
        schema = checkSchemaName(schemas[0]) if schemas else None
        dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
        return DatabaseSpec("postgresql", dsn=dsn, schema=schema)
    raise ConfigError(f"{what}: cannot read {argstring!r}; expected {FORMAT}")
