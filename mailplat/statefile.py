"""
Small SQLite files of soft state in the data directory (the greylisting
triplets, the failed-login counters): read and written by every worker
process of a server, in WAL mode, and never the only copy of anything a
user would miss (a lost change only greylists or counts once more).
"""

import os
import sqlite3
from typing import Sequence

__all__ = ["openStateFile"]


def openStateFile(path: str, schema: Sequence[str], synchronous: str = "NORMAL", timeout: float = 1.0) -> sqlite3.Connection:
    """
    Open (and make, with its directory) the state file C{path}: autocommit
    (C{BEGIN} where a change needs one), WAL, the given C{synchronous}
    level, C{schema}'s statements run (C{CREATE ... IF NOT EXISTS}).

    @param timeout: seconds to wait for another process's write.
    @raise sqlite3.DatabaseError: the file is not a usable database.
    @raise OSError: the directory cannot be made.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        for statement in schema:
            db.execute(statement)
    except BaseException:
        db.close()
        raise
    return db
