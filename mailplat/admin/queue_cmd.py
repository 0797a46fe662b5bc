"""
The C{mailplat queue ...} admin command: look at and act on the outbound
queue (C{<dataDir>/queue/}, see L{mailplat.queue}).

    mailplat ... queue list
    mailplat ... queue show ID
    mailplat ... queue flush [ID]
    mailplat ... queue delete ID
    mailplat ... queue hold ID
    mailplat ... queue release ID

The command works on the queue files directly, under the queue's lock, so
it is safe while the server runs; a running server acts on flushed or
released entries within two seconds (it watches the file queue's
C{generation} counter; the PostgreSQL queue tells every node at once).
"""

import os
import sys
from datetime import datetime, timezone
from typing import Any, Generator, Optional, cast

from twisted.internet import defer
from twisted.python import usage

from mailplat.errors import ConfigError
from mailplat.queue import NoSuchEntry, QueueEntry
from mailplat.queue.sql import queueFor


class _IdArg(usage.Options):
    synopsis = "ID"

    def parseArgs(self, entryId: str) -> None:  # type: ignore[override]
        self["id"] = entryId


class QueueList(usage.Options):
    synopsis = ""
    description = "List the queued messages."


class QueueShow(_IdArg):
    description = "Show a queued message's envelope and the state of each recipient."


class QueueFlush(usage.Options):
    synopsis = "[ID]"
    description = "Try a queued message (or every one not held) again now."

    def parseArgs(self, entryId: Optional[str] = None) -> None:
        self["id"] = entryId


class QueueDelete(_IdArg):
    description = "Remove a queued message without delivering or bouncing it."


class QueueHold(_IdArg):
    description = "Stop delivering a queued message until it is released."


class QueueRelease(_IdArg):
    description = "Deliver a held message again."


class QueueOptions(usage.Options):
    """
    C{mailplat queue list|show|flush|delete|hold|release}.
    """

    synopsis = "list | show ID | flush [ID] | delete ID | hold ID | release ID"
    subCommands = [
        ["list", None, QueueList, QueueList.description],
        ["show", None, QueueShow, QueueShow.description],
        ["flush", None, QueueFlush, QueueFlush.description],
        ["delete", None, QueueDelete, QueueDelete.description],
        ["hold", None, QueueHold, QueueHold.description],
        ["release", None, QueueRelease, QueueRelease.description],
    ]

    def postOptions(self) -> None:
        if not self.subCommand:
            raise usage.UsageError("queue needs one of: list, show, flush, delete, hold, release")


def queuePath(config: Any) -> str:
    """
    Where the queue of C{config} lives.
    """
    return os.path.join(config.dataDir, "queue")


def _when(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _summary(entry: QueueEntry) -> str:
    states = ", ".join(f"{r.address} {r.state}" for r in entry.recipients)
    held = " HELD" if entry.held else ""
    return f"{entry.id}{held} {_when(entry.created)} <{entry.sender or ''}> {states}"


@defer.inlineCallbacks
def run(options: QueueOptions, config: Any, out: Any = None, clock: Any = None) -> Generator["defer.Deferred[Any]", Any, None]:
    """
    Carry out a parsed L{QueueOptions} command.

    @param config: the L{mailplat.config.Config} (its C{dataDir} is used).
    @param out: where to write (standard output by default).
    @param clock: an L{IReactorTime} (the reactor by default).
    @return: a Deferred firing when done; it fails with
        L{mailplat.errors.ConfigError} for an unknown id.
    """
    out = out if out is not None else sys.stdout
    if clock is None:
        from twisted.internet import reactor as clock
    queue = queueFor(getattr(config, "store", ""), config.dataDir, clock)
    verb = options.subCommand
    entryId: Optional[str] = options.subOptions.get("id") if options.subOptions is not None else None
    # Only flush may go without an id: _IdArg requires one for the others.
    givenId = cast(str, entryId)
    try:
        if verb == "list":
            entries = queue.list()
            for entry in entries:
                out.write(_summary(entry) + "\n")
            out.write(f"{len(entries)} message(s) queued\n")
        elif verb == "show":
            entry = queue.get(givenId)
            out.write(f"id: {entry.id}\nsender: <{entry.sender or ''}>\nqueued: {_when(entry.created)}\n")
            out.write(f"held: {'yes' if entry.held else 'no'}\n")
            if entry.envid:
                out.write(f"envid: {entry.envid}\n")
            for r in entry.recipients:
                out.write(
                    f"recipient: {r.address} {r.state} attempts={r.attempts} next={_when(r.nextAttempt)}"
                    f" last={_when(r.lastAttempt)} reply={r.reply or '-'}\n"
                )
        elif verb == "flush":
            ids = yield queue.flush(entryId)
            out.write(f"flushed {len(ids)} message(s)\n")
        elif verb == "delete":
            yield queue.delete(givenId)
            out.write(f"deleted {entryId}\n")
        elif verb == "hold":
            yield queue.hold(givenId)
            out.write(f"held {entryId}\n")
        elif verb == "release":
            yield queue.release(givenId)
            out.write(f"released {entryId}\n")
    except NoSuchEntry:
        raise ConfigError(f"{entryId}: no such queued message")
    finally:
        # The SQL queue holds database connections; the file queue nothing.
        close = getattr(queue, "close", None)
        if close is not None:
            yield close()
