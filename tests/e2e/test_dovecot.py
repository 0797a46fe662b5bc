"""
Differential tests against Dovecot: the same messages APPENDed to both
servers, the same FETCH and SEARCH commands sent to both, the answers
compared.  Where the two differ the RFC decides, and the differences we keep
on purpose are listed in L{ACCEPTED} with the reason.

The same is done for POP3 (STAT, LIST, RETR, TOP).

Dovecot runs from Debian's dovecot-imapd and dovecot-pop3d (installed by .ci/run) in the
test's scratch directory on a free loopback port; the test is skipped with
the reason when it is not installed or we are not root (Dovecot's mail
processes need a non-root user to switch to).
"""

import imaplib
import poplib
import os
import pwd
import shutil
import socket
import tempfile

from twisted.internet import defer, error, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from tests.e2e.corpus import corpus
from tests.e2e.server import LoopbackServer

DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
USER, PASSWORD = "alice@example.test", "pw"

# The corpus has a 5000-octet line; poplib refuses lines over 2048 by default.
poplib._MAXLINE = max(poplib._MAXLINE, 100000)

ITEMS = [
    "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]", "BODY.PEEK[2]", "BODY.PEEK[1.1]", "BODY.PEEK[3.HEADER]", "BODY.PEEK[3.1]", "BODY.PEEK[2.MIME]",
    "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]", "BODY.PEEK[]<3.20>",
    "BODY.PEEK[TEXT]<0.5>",
]

SEARCHES = [
    'SUBJECT "hello"', 'FROM "jurgen"', 'TEXT "plain text"', 'BODY "plain text"', "HEADER Content-Type multipart",
    "LARGER 1000", "SMALLER 200", 'TO "doe"', "OR SUBJECT alt SUBJECT mixed", "NOT SUBJECT p", "SENTSINCE 1-Jan-2021",
]

# (message name, item): why our answer differs from Dovecot's and why ours
# is what RFC 3501 asks for.
ACCEPTED = {
    # The message has no blank line after its header: RFC 3501 6.4.5 says
    # the header sections include "the blank line between header and body";
    # we add the CRLF that ends the header, Dovecot sends none.
    ("header-only", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]"),
    ("no-blank", "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]"),
    # A display name with a double quote in it: Dovecot sends it as a
    # literal, we as a quoted string with the quote escaped; both are the
    # same RFC 3501 string.
    ("address-edge", "ENVELOPE"),
}

CONFIG = """\
base_dir = {run}
state_dir = {dir}/state
log_path = /dev/stderr
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_location = maildir:{dir}/home/%n/Maildir
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dir}/home/%n
}}
"""


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot(protocol.ProcessProtocol):
    """
    Dovecot in the foreground; C{ready} fires when it says it started.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"starting up" in self.output:
            self.ready.callback(None)

    outReceived = errReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError("dovecot did not start: " + self.output.decode("utf-8", "replace")))
        self.ended.callback(None)


def fetchAll(port: int, messages: list) -> dict:
    """
    APPEND every message to a server's INBOX, then FETCH every item of each
    and run every search; return the answers by key.
    """
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    try:
        conn.login(USER, PASSWORD)
        for name, data in messages:
            typ, resp = conn.append("INBOX", None, None, data)
            if typ != "OK":
                raise AssertionError(f"APPEND {name}: {resp!r}")
        conn.select("INBOX")
        answers = {}
        for seq, (name, data) in enumerate(messages, 1):
            for item in ITEMS:
                typ, got = conn.fetch(str(seq), f"({item})")
                flat = b"".join(d[0] + b"{literal}" + d[1] if isinstance(d, tuple) else d for d in got)
                answers[(name, item)] = (typ, flat)
        for search in SEARCHES:
            answers[("SEARCH", search)] = conn.search(None, search)
        return answers
    finally:
        conn.logout()


def popAll(port: int) -> dict:
    """
    STAT, LIST, and RETR and TOP of every message, over POP3.
    """
    conn = poplib.POP3("127.0.0.1", port, timeout=30)
    answers = {}
    try:
        conn.user(USER)
        conn.pass_(PASSWORD)
        count, size = answers["STAT"] = conn.stat()
        answers["LIST"] = conn.list()[1]
        for n in range(1, count + 1):
            answers[("RETR", n)] = conn.retr(n)[1]
            answers[("TOP", n)] = conn.top(n, 1)[1]
    finally:
        conn.quit()
    return answers


def normalise(answer: tuple) -> tuple:
    """
    RFC 3501 makes MIME type, subtype, encoding and parameter names
    case-insensitive: Dovecot sends them as written, we upper-case them.
    Compare without case, and with quoted strings and literals unified.
    """
    typ, data = answer
    if isinstance(data, list):
        return typ, data
    return typ, data.lower().replace(b'\\"', b'"')


class DovecotDifferentialTests(TestCase):
    """
    mailplat and Dovecot answer the same IMAP questions the same way.
    """

    timeout = 120

    def setUp(self):
        if DOVECOT is None:
            raise self.skipTest("Dovecot is not installed (apt-get install dovecot-imapd; .ci/run does)")
        if os.geteuid() != 0:
            raise self.skipTest("Dovecot's mail processes need root to switch to user 'nobody'")
        try:
            pwd.getpwnam("dovenull")
        except KeyError:
            raise self.skipTest("Dovecot's users are missing (dovenull)")

    @defer.inlineCallbacks
    def test_sameAnswers(self):
        # Dovecot's own users (dovecot, nobody) must reach these files, and
        # its UNIX sockets need a short path: a directory of its own in /tmp.
        scratch = tempfile.mkdtemp(prefix="mpdov")
        self.addCleanup(shutil.rmtree, scratch, True)
        os.chmod(scratch, 0o755)
        os.makedirs(os.path.join(scratch, "home"))
        nobody = pwd.getpwnam("nobody")
        os.chown(os.path.join(scratch, "home"), nobody.pw_uid, nobody.pw_gid)
        with open(os.path.join(scratch, "users"), "w") as f:
            f.write(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        os.chmod(os.path.join(scratch, "users"), 0o644)
        port, pop3port = freePort(), freePort()
        config = os.path.join(scratch, "dovecot.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(dir=scratch, run=os.path.join(scratch, "run"), port=port, pop3port=pop3port))
        dovecot = Dovecot()
        reactor.spawnProcess(dovecot, DOVECOT, [DOVECOT, "-F", "-c", config], env={"PATH": os.environ.get("PATH", "")})

        def stopDovecot():
            try:
                dovecot.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
            return dovecot.ended

        self.addCleanup(stopDovecot)
        yield dovecot.ready

        ours = LoopbackServer(os.path.abspath(self.mktemp())).start()
        self.addCleanup(ours.stop)
        yield ours.addUser(USER, PASSWORD)

        messages = corpus()
        try:
            theirs = yield threads.deferToThread(fetchAll, port, messages)
        except Exception as e:
            raise AssertionError(f"Dovecot failed: {e}\n{dovecot.output.decode('utf-8', 'replace')}")
        mine = yield threads.deferToThread(fetchAll, ours.ports["imap"], messages)
        differences = []
        for key in theirs:
            if key in ACCEPTED:
                continue
            if normalise(theirs[key]) != normalise(mine[key]):
                differences.append(f"{key}:\n  dovecot:  {theirs[key]!r}\n  mailplat: {mine[key]!r}")
        theirs = yield threads.deferToThread(popAll, pop3port)
        mine = yield threads.deferToThread(popAll, ours.ports["pop3"])
        for key in theirs:
            if theirs[key] != mine[key]:
                differences.append(f"POP3 {key}:\n  dovecot:  {theirs[key]!r}\n  mailplat: {mine[key]!r}")
        self.assertEqual(differences, [], "\n".join(differences))
