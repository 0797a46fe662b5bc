"""
The SQL store: SQLite for one machine, PostgreSQL shared by several.

  - L{schema}: tables and versioned migrations, one schema for both.
  - L{database}: SQL off the reactor thread, locks, change notification.
  - L{store}: L{SQLStore}, its accounts and mailboxes.
  - L{config}: the plugins' argument string.
  - L{plugin}: L{SQLStoreFactory} (C{--store sql[:ARGS]}).
  - L{checker}: L{SQLCheckerFactory} (C{--auth sql:ARGS}).
"""

from mailplat.store.sql.checker import SQLChecker, SQLCheckerFactory
from mailplat.store.sql.plugin import SQLStoreFactory
from mailplat.store.sql.store import SQLAccount, SQLMailbox, SQLStore

__all__ = ["SQLAccount", "SQLChecker", "SQLCheckerFactory", "SQLMailbox", "SQLStore", "SQLStoreFactory"]
