"""
Sieve mail filtering (RFC 5228) in the local delivery pipeline.

Each account may have one script, kept in the data directory as
C{<dataDir>/sieve/<address>.sieve} (the address normalised, as the
account's login name).  L{mailplat.delivery.local.LocalDelivery} runs it
for every message delivered to that account, after the policies and
before the store, and carries out its actions: C{keep} and C{fileinto}
(a missing mailbox is created only with C{:create}, RFC 5490; otherwise
the message goes to INBOX and the problem is logged), C{discard},
C{redirect} (through the queue, at most 5 per message, never when the
message was already redirected by this account: loop protection),
C{reject} (RFC 5429: a DSN-like refusal to the sender, never to C{<>}),
C{vacation} (RFC 5230: see L{SieveFilter.vacationReply}).

A script that cannot be read or is not valid Sieve is logged and the
message is kept in INBOX: a script never loses mail.  Scripts are
managed with C{mailplat sieve ...} (L{mailplat.admin.sieve_cmd}).
"""

import email.parser
import email.policy
import email.utils
import json
import os
import secrets
import time
from datetime import datetime, timezone
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, cast

from twisted.logger import Logger

from mailplat.address import normalizeAddress
from mailplat.delivery.dsn import readHeaders
from mailplat.delivery.local import REDIRECT_HEADER as _REDIRECT_HEADER
from mailplat.sieve.interpreter import Action, Interpreter, MessageContext, validate
from mailplat.sieve.parser import SieveError, parse

__all__ = ["SieveError", "SieveFilter", "compile", "Action"]

#: The header put on a redirected message, naming the account that
#: redirected it (loop protection).
REDIRECT_HEADER = _REDIRECT_HEADER
#: Vacation's default and smallest period, in days (RFC 5230 4.1).
DEFAULT_DAYS = 7
MIN_DAYS = 1


def compile(text: str) -> Interpreter:
    """
    Parse and check a script.

    @raise SieveError: it is not valid (the message says where).
    """
    commands = parse(text)
    validate(commands)
    return Interpreter(commands)


def scriptPath(dataDir: str, address: str) -> str:
    """
    Where the script of C{address} lives.

    @raise ValueError: C{address} cannot be a file name.
    """
    address = normalizeAddress(address)
    if not address or "/" in address or "\x00" in address or address.startswith("."):
        raise ValueError(f"{address!r} is not an address")
    return os.path.join(dataDir, "sieve", address + ".sieve")


class SieveFilter:
    """
    Finds, compiles (cached by file stamp) and runs each account's script,
    and keeps the vacation state.

    @ivar dataDir: the data directory.
    @ivar hostname: our host name (for the replies the filter writes).
    @ivar clock: gives the time (C{seconds()}); the wall clock when L{None}.
    """

    _log = Logger()

    def __init__(self, dataDir: str, hostname: str = "localhost", clock: Any = None) -> None:
        self.dataDir = dataDir
        self.hostname = hostname
        self.clock = clock
        self._cache: Dict[str, Tuple[tuple, Optional[Interpreter]]] = {}

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.time()

    def script(self, address: str) -> Optional[Interpreter]:
        """
        The compiled script of C{address}, or L{None} when it has none or
        its script is invalid (logged once per version of the file).
        """
        try:
            path = scriptPath(self.dataDir, address)
            stat = os.stat(path)
        except (ValueError, FileNotFoundError):
            return None
        except OSError:
            self._log.failure("sieve: cannot read the script of {address}", address=address)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._cache.get(address)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        interpreter: Optional[Interpreter]
        try:
            with open(path, encoding="utf-8") as f:
                interpreter = compile(f.read())
        except (SieveError, UnicodeDecodeError, OSError) as e:
            self._log.error("sieve: script {path} is invalid, mail is kept in INBOX: {error}", path=path, error=str(e))
            interpreter = None
        self._cache[address] = (stamp, interpreter)
        return interpreter

    def evaluate(self, address: str, sender: Optional[str], message: BinaryIO, size: int) -> Optional[List[Action]]:
        """
        Run the script of C{address} on C{message}.

        @return: the actions, or L{None} when there is no (valid) script.
        """
        interpreter = self.script(address)
        if interpreter is None:
            return None
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(readHeaders(message))
        message.seek(0)
        context = MessageContext(headers, size, sender or "", address)
        try:
            return interpreter.run(context)
        except Exception:
            self._log.failure("sieve: running the script of {address} failed; mail is kept in INBOX", address=address)
            return None

    # Vacation (RFC 5230).

    def _statePath(self, address: str) -> str:
        return os.path.join(self.dataDir, "sieve", normalizeAddress(address) + ".vacation.json")

    def vacationReply(self, address: str, sender: Optional[str], message: BinaryIO, action: Action) -> Optional[bytes]:
        """
        The vacation reply to send to C{sender} for C{action}, or L{None}
        when none is due: never to C{<>} or to an address of the account;
        never for auto-submitted mail (C{Auto-Submitted} other than
        C{no}), mailing-list mail (C{List-Id} and other C{List-*} headers,
        C{Precedence: bulk/list/junk}), or mail that does not name the
        account (or one of C{:addresses}) in C{To}/C{Cc}/C{Bcc}/C{Resent-*};
        and once per sender per C{:days} period (state kept in
        C{<dataDir>/sieve/<address>.vacation.json}).
        """
        if not sender:
            return None
        sender = normalizeAddress(sender)
        options = action.options
        # The script was validated: :addresses is a string list, :days an int.
        addresses = cast(List[str], options.get("addresses", []) or [])
        mine = {normalizeAddress(address)} | {normalizeAddress(a) for a in addresses}
        if sender in mine or sender.split("@")[0] in ("mailer-daemon", "owner", "listserv") or "-request@" in sender:
            return None
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(readHeaders(message))
        message.seek(0)
        auto = (headers.get("Auto-Submitted") or "no").strip().lower()
        if auto != "no":
            return None
        if any(k.lower().startswith("list-") for k in headers.keys()):
            return None
        if (headers.get("Precedence") or "").strip().lower() in ("bulk", "list", "junk"):
            return None
        named = {
            normalizeAddress(a)
            for _, a in email.utils.getaddresses(
                [str(v) for h in ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc") for v in headers.get_all(h, [])]
            )
            if a
        }
        if not named & mine:
            return None
        days = cast(int, options.get("days", DEFAULT_DAYS))
        period = max(int(days), MIN_DAYS) * 86400
        handle = str(options.get("handle") or f"{options.get('subject', '')}\x00{action.reason}")
        now = self._now()
        state = self._loadState(address)
        key = f"{handle}\x00{sender}"
        if now - state.get(key, -1e18) < period:
            return None
        state = {k: v for k, v in state.items() if now - v < 366 * 86400}
        state[key] = now
        self._saveState(address, state)
        subject = options.get("subject")
        if not subject:
            original = (headers.get("Subject") or "").strip()
            subject = "Auto: " + original if original else "Auto: (no subject)"
        fromHeader = str(options.get("from") or address)
        lines = [
            f"From: {fromHeader}",
            f"To: <{sender}>",
            f"Subject: {_oneLine(str(subject))}",
            f"Date: {email.utils.format_datetime(datetime.fromtimestamp(now, timezone.utc))}",
            f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>",
            "Auto-Submitted: auto-replied (vacation)",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ]
        messageId = headers.get("Message-ID")
        if messageId:
            lines.append(f"In-Reply-To: {_oneLine(messageId)}")
            lines.append(f"References: {_oneLine(messageId)}")
        body = (action.reason or "").replace("\r\n", "\n").replace("\n", "\r\n")
        if not body.endswith("\r\n"):
            body += "\r\n"
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")

    def _loadState(self, address: str) -> Dict[str, float]:
        try:
            with open(self._statePath(address), encoding="utf-8") as f:
                data = json.load(f)
            return {str(k): float(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, OSError):
            self._log.warn("sieve: unreadable vacation state of {address}; starting afresh", address=address)
            return {}

    def _saveState(self, address: str, state: Dict[str, float]) -> None:
        path = self._statePath(address)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)


def _oneLine(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)
