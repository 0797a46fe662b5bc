"""
The C{mailplat migrate} admin command: move accounts between stores, or
import a Dovecot or Courier Maildir, keeping UIDVALIDITY, UIDs, flags,
keywords, internal dates, modseqs (between mailplat stores: Dovecot and
Courier keep none outside their binary indexes), mailboxes and
subscriptions (see L{mailplat.migrate}).

    mailplat ... migrate --from STORE --to STORE [--user ADDRESS]

STORE is a store spec as in C{--store} (C{maildir:/srv/mail},
C{sql:sqlite:/var/lib/mailplat/mail.db}, ...), or, for C{--from} only,
C{dovecot-maildir:PATH} / C{courier-maildir:PATH} (one user's Maildir,
read-only, which needs C{--user}).  A run that was interrupted may be
started again: it skips the messages already copied.  The copy is verified
at the end; any difference is printed and the command fails.
"""

import sys
from typing import Any, Generator, List, Optional, TextIO

from twisted.internet import defer
from twisted.python import usage

from mailplat.address import normalizeAddress
from mailplat.errors import ConfigError
from mailplat.migrate import Migration, Progress
from mailplat.plugins import makeStore
from mailplat.store.foreign import parseForeignSpec


class MigrateOptions(usage.Options):
    """
    C{mailplat migrate --from STORE --to STORE [--user ADDRESS]}.
    """

    synopsis = "--from STORE --to STORE [--user ADDRESS]"
    description = (
        "Copy accounts from one store to another, keeping UIDs, flags, dates and modseqs, then verify the copy. "
        "--from also takes dovecot-maildir:PATH or courier-maildir:PATH (one user's Maildir, with --user). "
        "Interrupted runs resume where they stopped."
    )
    optParameters = [
        ["from", None, None, "The source store (NAME[:ARGS], or dovecot-maildir:PATH / courier-maildir:PATH)."],
        ["to", None, None, "The target store (NAME[:ARGS])."],
        ["user", None, None, "Migrate only this account (required for a Dovecot or Courier Maildir)."],
    ]
    optFlags = [["quiet", "q", "Print only the summary and any mismatch."]]

    def postOptions(self) -> None:
        if not self["from"] or not self["to"]:
            raise usage.UsageError("migrate needs --from STORE and --to STORE")
        if self["from"] == self["to"]:
            raise usage.UsageError("--from and --to name the same store")


class TextProgress(Progress):
    """
    Progress on a terminal as one redrawn bar, elsewhere as plain lines
    (one per mailbox, and one every L{every} messages).
    """

    every = 1000
    width = 30

    def __init__(self, out: TextIO, tty: Optional[bool] = None, quiet: bool = False) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.quiet = quiet
        self.total = 0
        self.done = 0
        self.skipped = 0
        self.current = ""

    def begin(self, address: str, total: int) -> None:
        self.total, self.done, self.skipped = total, 0, 0
        if not self.quiet and not self.tty:
            self.out.write(f"{address}: {total} message(s)\n")

    def mailbox(self, address: str, name: str, messages: int) -> None:
        self.current = f"{address} {name}"
        if self.quiet:
            return
        if self.tty:
            self._draw()
        else:
            self.out.write(f"{address} {name}: {messages} message(s)\n")

    def advance(self, copied: int, skipped: int) -> None:
        self.done += copied + skipped
        self.skipped += skipped
        if self.quiet:
            return
        if self.tty:
            self._draw()
        elif self.done % self.every == 0:
            self.out.write(f"  {self.done}/{self.total}\n")

    def _draw(self) -> None:
        filled = self.width * self.done // self.total if self.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        self.out.write(f"\r[{bar}] {self.done}/{self.total} {self.current[:40]:<40}")
        self.out.flush()

    def end(self, address: str) -> None:
        if not self.quiet and self.tty:
            self._draw()
            self.out.write("\n")


def _open(spec: str, config: Any, what: str, user: Optional[str]) -> Any:
    foreign = parseForeignSpec(spec, user)
    if foreign is not None:
        if what == "--to":
            raise ConfigError(f"--to {spec}: a Dovecot or Courier Maildir can only be read (--from)")
        return foreign
    return makeStore(spec, config.dataDir, what)


@defer.inlineCallbacks
def run(options: MigrateOptions, config: Any, out: TextIO = sys.stdout) -> Generator["defer.Deferred[Any]", Any, None]:
    """
    Carry out C{mailplat migrate}.

    @raise ConfigError: (as a failure) bad stores, or the verification
        found differences (each printed first, one line each).
    """
    user = normalizeAddress(options["user"]) if options["user"] else None
    source = _open(options["from"], config, "--from", user)
    target = None
    try:
        target = _open(options["to"], config, "--to", user)
        progress = TextProgress(out, quiet=options["quiet"])
        migration = Migration(source, target, progress)
        addresses: Optional[List[str]] = [user] if user else None
        reports = yield migration.run(addresses)
        bad = 0
        for report in reports:
            for line in report.mismatches:
                out.write(f"MISMATCH {line}\n")
            bad += len(report.mismatches)
            out.write(
                f"{report.address}: {report.mailboxes} mailbox(es), {report.copied} message(s) copied,"
                f" {report.skipped} already there, {'verified' if not report.mismatches else 'NOT verified'}\n"
            )
        if bad:
            raise ConfigError(f"migrate: verification found {bad} difference(s) between the stores (listed above)")
        out.write(f"migrated {len(reports)} account(s) from {options['from']} to {options['to']}; verified\n")
    finally:
        yield source.close()
        if target is not None:
            yield target.close()
