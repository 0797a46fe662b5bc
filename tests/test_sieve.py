"""
Tests for L{mailplat.sieve}: the parser, the interpreter, the filter in
the delivery pipeline (fileinto, discard, redirect, reject, vacation) and
the C{sieve} admin command.
"""

import email.parser
import email.policy
import io
import os
from types import SimpleNamespace

from twisted.internet import task
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailplat.admin import sieve_cmd
from mailplat.delivery.directory import StoreDirectory
from mailplat.delivery.local import LocalDelivery
from mailplat.errors import ConfigError
from mailplat.queue import Queue
from mailplat.sieve import SieveError, SieveFilter, compile, scriptPath
from mailplat.sieve.interpreter import MessageContext, matches
from mailplat.sieve.parser import parse
from mailplat.store.memory import MemoryStore

MESSAGE = (
    b"From: Carol <carol@far.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= report\r\n"
    b"Message-ID: <m1@far.test>\r\n"
    b"\r\n"
    b"body\r\n"
)


def run(script: str, message: bytes = MESSAGE, sender: str = "carol@far.test", to: str = "alice@example.test"):
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    return [(a.name, a.mailbox or a.address or a.reason) for a in compile(script).run(MessageContext(headers, len(message), sender, to))]


class ParserTests(SynchronousTestCase):
    def test_structure(self) -> None:
        [req, cond] = parse('require ["fileinto"]; # comment\n/* block\n */ if true { fileinto "A"; }')
        self.assertEqual(req.args, [["fileinto"]])
        self.assertEqual(cond.tests[0].name, "true")
        self.assertEqual(cond.block[0].args, [["A"]])

    def test_multilineAndNumbers(self) -> None:
        [c] = parse('vacation :days 2 text:\nline\n..dot\n.\n;')
        self.assertEqual(c.args[1], 2)
        self.assertEqual(c.args[2], ["line\n.dot\n"])
        [t] = parse("if size :over 10K { keep; }")[0].tests
        self.assertEqual(t.args[1], 10240)

    def test_escapes(self) -> None:
        [c] = parse(r'fileinto "a\"b\\c";')
        self.assertEqual(c.args, [['a"b\\c']])

    def test_errors(self) -> None:
        for script in ['if true { keep; ', 'keep', '"x";', 'if (true { keep; }', 'keep; }', '@']:
            self.assertRaises(SieveError, parse, script)

    def test_validation(self) -> None:
        for script in [
            'fileinto "A";',  # not required
            'require "nosuch";',
            'keep; require "fileinto";',
            'elsif true { keep; }',
            'if header :is :contains "a" "b" { keep; }',
            'if header :comparator "i;nope" "a" "b" { keep; }',
            'if size 10 { keep; }',
            'if envelope "from" "x" { keep; }',
            'require "fileinto"; fileinto :create "A";',
            'redirect "nobody";',
            'frobnicate;',
            'if nosuchtest { keep; }',
            'require "envelope"; if envelope "cc" "x" { keep; }',
        ]:
            self.assertRaises(SieveError, compile, script)


class InterpreterTests(SynchronousTestCase):
    def test_implicitKeep(self) -> None:
        self.assertEqual(run(""), [("keep", "INBOX")])
        self.assertEqual(run("discard;"), [])

    def test_headerMatchTypes(self) -> None:
        script = 'require "fileinto"; if header :contains "subject" "café" { fileinto "Cafe"; }'
        self.assertEqual(run(script), [("fileinto", "Cafe")])
        self.assertEqual(run('require "fileinto"; if header :is "Subject" "CAFÉ REPORT" { fileinto "X"; }'), [("keep", "INBOX")])
        self.assertEqual(run('require "fileinto"; if header :is "Subject" "CAFé REPORT" { fileinto "X"; }'), [("fileinto", "X")])
        self.assertEqual(run('require "fileinto"; if header :matches "subject" "c?f* rep*" { fileinto "M"; }'), [("fileinto", "M")])
        self.assertEqual(
            run('require "fileinto"; if header :comparator "i;octet" :contains "subject" "REPORT" { fileinto "M"; }'),
            [("keep", "INBOX")],
        )

    def test_wildcardEscapes(self) -> None:
        self.assertTrue(matches("a*b", r"a\*b", "matches"))
        self.assertFalse(matches("axb", r"a\*b", "matches"))
        self.assertTrue(matches("", "*", "matches"))

    def test_address(self) -> None:
        base = 'require "fileinto"; if address %s "from" "%s" { fileinto "Y"; }'
        self.assertEqual(run(base % (":domain :is", "FAR.test")), [("fileinto", "Y")])
        self.assertEqual(run(base % (":localpart :is", "carol")), [("fileinto", "Y")])
        self.assertEqual(run(base % (":all :is", "carol@far.test")), [("fileinto", "Y")])
        self.assertEqual(run(base % (":is", "Carol")), [("keep", "INBOX")])

    def test_envelopeSizeExists(self) -> None:
        self.assertEqual(
            run('require ["envelope", "fileinto"]; if envelope :domain "from" "far.test" { fileinto "E"; }'), [("fileinto", "E")]
        )
        self.assertEqual(run('require "fileinto"; if size :under 1K { fileinto "S"; }'), [("fileinto", "S")])
        self.assertEqual(run('require "fileinto"; if size :over 1K { fileinto "S"; }'), [("keep", "INBOX")])
        self.assertEqual(run('require "fileinto"; if exists ["From", "To"] { fileinto "X"; }'), [("fileinto", "X")])
        self.assertEqual(run('require "fileinto"; if exists ["From", "Cc"] { fileinto "X"; }'), [("keep", "INBOX")])

    def test_controlFlow(self) -> None:
        script = """require "fileinto";
        if anyof (false, not true) { fileinto "A"; }
        elsif allof (true, header :contains "to" "alice") { fileinto "B"; stop; fileinto "C"; }
        else { fileinto "D"; }
        fileinto "E";"""
        self.assertEqual(run(script), [("fileinto", "B")])
        self.assertEqual(run('require "fileinto"; if false { keep; } else { fileinto "D"; } keep;'), [("fileinto", "D"), ("keep", "INBOX")])

    def test_actions(self) -> None:
        self.assertEqual(run('redirect "bob@far.test"; redirect "bob@far.test";'), [("redirect", "bob@far.test")])
        self.assertEqual(run('require "reject"; reject "go away";'), [("reject", "go away")])
        self.assertEqual(run('require "vacation"; vacation "away";'), [("vacation", "away"), ("keep", "INBOX")])
        self.assertEqual(run('redirect "a@b.test"; keep;'), [("redirect", "a@b.test"), ("keep", "INBOX")])


class PipelineTests(SynchronousTestCase):
    """
    The filter in L{LocalDelivery}.
    """

    def setUp(self) -> None:
        self.dataDir = self.mktemp()
        os.makedirs(self.dataDir)
        self.store = MemoryStore()
        for a in ("alice@example.test", "bob@example.test"):
            self.successResultOf(self.store.getAccount(a, create=True))
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.queue = Queue(os.path.join(self.dataDir, "queue"), self.clock)
        self.sieve = SieveFilter(self.dataDir, "mx.example.test", self.clock)
        self.delivery = LocalDelivery(
            StoreDirectory(self.store), self.store, self.queue, hostname="mx.example.test", clock=self.clock, sieve=self.sieve
        )

    def script(self, text: str, address: str = "alice@example.test") -> None:
        path = scriptPath(self.dataDir, address)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def deliver(self, sender: str = "carol@far.test", to: str = "alice@example.test", message: bytes = MESSAGE) -> None:
        self.successResultOf(self.delivery.deliver(None, sender, [to], io.BytesIO(message)))

    def box(self, name: str = "INBOX", address: str = "alice@example.test") -> list:
        account = self.successResultOf(self.store.getAccount(address))
        box = self.successResultOf(account.getMailbox(name))
        return [self.successResultOf(box.openMessage(i.uid)).read() for i in self.successResultOf(box.listMessages())]

    def queued(self) -> list:
        out = []
        for entry in self.queue.list():
            with self.queue.openMessage(entry.id) as f:
                out.append((entry.sender, [r.address for r in entry.recipients], f.read()))
        return out

    def test_noScript(self) -> None:
        self.deliver()
        self.assertEqual(len(self.box()), 1)

    def test_invalidScriptKeeps(self) -> None:
        self.script("this is not sieve")
        self.deliver()
        self.assertEqual(len(self.box()), 1)

    def test_fileintoExisting(self) -> None:
        account = self.successResultOf(self.store.getAccount("alice@example.test"))
        self.successResultOf(account.createMailbox("Reports"))
        self.script('require "fileinto"; if header :contains "subject" "report" { fileinto "Reports"; }')
        self.deliver()
        self.assertEqual(self.box(), [])
        self.assertEqual(len(self.box("Reports")), 1)

    def test_fileintoMissing(self) -> None:
        self.script('require "fileinto"; fileinto "Nowhere";')
        self.deliver()
        self.assertEqual(len(self.box()), 1)
        self.script('require ["fileinto", "mailbox"]; fileinto :create "Made";')
        self.deliver()
        self.assertEqual(len(self.box("Made")), 1)
        self.assertEqual(len(self.box()), 1)

    def test_discard(self) -> None:
        self.script("discard;")
        self.deliver()
        self.assertEqual(self.box(), [])

    def test_redirectRemote(self) -> None:
        self.script('redirect "dave@far.test";')
        self.deliver()
        self.assertEqual(self.box(), [])
        [(sender, recipients, data)] = self.queued()
        self.assertEqual((sender, recipients), ("carol@far.test", ["dave@far.test"]))
        self.assertTrue(data.startswith(b"X-Mailplat-Sieve-Redirected: alice@example.test\r\n"), data)

    def test_redirectLoop(self) -> None:
        """
        alice redirects to bob, bob back to alice: alice keeps it the
        second time round.
        """
        self.script('redirect "bob@example.test";')
        self.script('redirect "alice@example.test";', "bob@example.test")
        self.deliver()
        self.assertEqual(len(self.box()), 1)
        self.assertEqual(self.box(address="bob@example.test"), [])

    def test_reject(self) -> None:
        self.script('require "reject"; reject "Not wanted here";')
        self.deliver()
        self.assertEqual(self.box(), [])
        [(sender, recipients, data)] = self.queued()
        self.assertEqual((sender, recipients), (None, ["carol@far.test"]))
        self.assertIn(b"Not wanted here", data)
        self.assertIn(b"Status: 5.7.1", data)

    def test_rejectNeverToNullSender(self) -> None:
        self.script('require "reject"; reject "no";')
        self.successResultOf(self.delivery.deliver(None, None, ["alice@example.test"], io.BytesIO(MESSAGE)))
        self.assertEqual(self.queued(), [])
        self.assertEqual(self.box(), [])

    def test_vacationOncePerPeriod(self) -> None:
        self.script('require "vacation"; vacation :days 2 :subject "Away" "Back Monday.";')
        self.deliver()
        self.deliver()
        self.assertEqual(len(self.box()), 2)
        [(sender, recipients, data)] = self.queued()
        self.assertEqual((sender, recipients), (None, ["carol@far.test"]))
        self.assertIn(b"Subject: Away\r\n", data)
        self.assertIn(b"Auto-Submitted: auto-replied", data)
        self.assertIn(b"In-Reply-To: <m1@far.test>", data)
        self.assertIn(b"Back Monday.", data)
        self.clock.advance(2 * 86400 + 1)
        self.deliver()
        self.assertEqual(len(self.queued()), 2)
        self.assertTrue(os.path.exists(os.path.join(self.dataDir, "sieve", "alice@example.test.vacation.json")))

    def test_vacationNotForListsOrAuto(self) -> None:
        self.script('require "vacation"; vacation "away";')
        for extra in (b"List-Id: <l.far.test>\r\n", b"Precedence: bulk\r\n", b"Auto-Submitted: auto-generated\r\n"):
            self.deliver(message=extra + MESSAGE)
        self.deliver(sender="")
        self.successResultOf(self.delivery.deliver(None, None, ["alice@example.test"], io.BytesIO(MESSAGE)))
        # Not addressed to alice in the headers.
        self.deliver(message=MESSAGE.replace(b"To: Alice <alice@example.test>", b"To: list@far.test"))
        self.assertEqual(self.queued(), [])
        self.deliver()
        self.assertEqual(len(self.queued()), 1)

    def test_vacationAddresses(self) -> None:
        self.script('require "vacation"; vacation :addresses ["alias@example.test"] "away";')
        self.deliver(message=MESSAGE.replace(b"To: Alice <alice@example.test>", b"To: alias@example.test"))
        self.assertEqual(len(self.queued()), 1)


class CommandTests(SynchronousTestCase):
    """
    The C{sieve} admin command.
    """

    def setUp(self) -> None:
        self.config = SimpleNamespace(dataDir=self.mktemp())
        os.makedirs(self.config.dataDir)

    def command(self, *argv: str, stdin: str = "") -> str:
        options = sieve_cmd.SieveOptions()
        options.parseOptions(list(argv))
        out = io.StringIO()
        self.successResultOf(sieve_cmd.run(options, self.config, out, io.StringIO(stdin)))
        return out.getvalue()

    def failure(self, *argv: str, stdin: str = "") -> str:
        options = sieve_cmd.SieveOptions()
        options.parseOptions(list(argv))
        return str(self.failureResultOf(sieve_cmd.run(options, self.config, io.StringIO(), io.StringIO(stdin)), ConfigError).value)

    def test_cycle(self) -> None:
        script = 'require "fileinto"; fileinto "A";\n'
        self.assertIn("installed", self.command("set", "Alice@Example.test", "-", stdin=script))
        self.assertEqual(self.command("show", "alice@example.test"), script)
        self.assertIn("removed", self.command("del", "alice@example.test"))
        self.assertIn("no sieve script", self.failure("show", "alice@example.test"))
        self.assertIn("no sieve script", self.failure("del", "alice@example.test"))

    def test_checkAndRefuse(self) -> None:
        path = os.path.join(self.config.dataDir, "s.sieve")
        with open(path, "w") as f:
            f.write("keep;")
        self.assertIn("valid", self.command("check", path))
        self.assertIn("invalid Sieve script", self.failure("set", "alice@example.test", "-", stdin="fileinto \"x\";"))
        self.assertFalse(os.path.exists(scriptPath(self.config.dataDir, "alice@example.test")))
        self.assertIn("cannot read", self.failure("check", path + ".missing"))
        self.assertIn("not an address", self.failure("show", "../x"))

    def test_usage(self) -> None:
        self.assertRaises(usage.UsageError, sieve_cmd.SieveOptions().parseOptions, [])
