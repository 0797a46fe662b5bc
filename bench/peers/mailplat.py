"""
mailplat started for a benchmark as a user would start it:

    twistd -n --pidfile= mailplat --config <scratch>/mailplat.toml --data-dir <scratch>/data \\
        --imap tcp:PORT:interface=127.0.0.1 --pop3 tcp:PORT:interface=127.0.0.1 \\
        --smtp none ... --workers N --auth CHECKER [more options]

(IMAP and POP3 by default; C{listen} picks the listeners, e.g. SMTP alone
for C{bench/compare_smtp.py}),

with a configuration file written here that raises C{[limits]
max_connections} to the connection count and the login throttle (which
counts logins under way against an account) above it.

The checker is C{memory:} by default (Twisted's, plain secrets in
memory), the counterpart of the C{{PLAIN}} passwd-file Dovecot is given,
so that a login costs both servers a comparison, not a password hash.
With C{argon2=True} the users are added with C{mailplat user add
--password-stdin} and checked by mailplat's own argon2id checker (about
0.14 s of CPU per login on the development machine).
"""

import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

from bench.peers import system
from bench.peers.dovecot import freePort, waitForGreeting
from bench.peers.postfix import waitForSMTP

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """\
[auth]
throttle_delay_after = {throttle}
throttle_refuse_after = {refuse}

[limits]
max_connections = {connections}
max_connections_per_address = {connections}
exempt_loopback = true
"""


class Mailplat(system.ScratchServer):
    """
    One mailplat under C{twistd}: L{start}, then L{stop} (or use it as a
    context manager).

    @ivar mailRoot: the Maildir store's root, C{<data-dir>/mail}; an
        account's INBOX is C{<mailRoot>/<domain>/<local>/Maildir}.
    @ivar ports: listener name to its port, C{{"imap": port, "pop3": port}}
        by default.
    """

    name = "mailplat"

    def __init__(self, users: Dict[str, str], connections: int = 1000, workers: int = 1,
                 argon2: bool = False, scratch: Optional[str] = None, twistd: Optional[List[str]] = None,
                 listen: Sequence[str] = ("imap", "pop3"), source: str = REPO, extra: Sequence[str] = ()) -> None:
        """
        @param twistd: the command that runs twistd (default: the venv's
            C{twistd}); another one, such as a script that patches a
            module before running twistd, lets a change be measured
            before it is made.
        @param listen: the listeners to serve (C{smtp}, C{imap}, C{pop3},
            ...), each on a free port of 127.0.0.1; the others are off.
        @param source: the mailplat tree to run, first on C{PYTHONPATH}
            (this checkout by default, or e.g. a C{git archive} of a commit).
        @param extra: more C{twistd mailplat} options (C{--hostname},
            C{--domain} ...).
        """
        self.dir = scratch or tempfile.mkdtemp(prefix="mpbmp")
        self.dataDir = os.path.join(self.dir, "data")
        self.mailRoot = os.path.join(self.dataDir, "mail")
        os.makedirs(self.mailRoot, exist_ok=True)
        self.users = users
        self.connections = connections
        self.workers = workers
        self.argon2 = argon2
        self.ports = {name: freePort() for name in listen}
        self.source = source
        self.extra = list(extra)
        self.process: Optional[subprocess.Popen] = None
        self.logPath = os.path.join(self.dir, "twistd.log")
        self.twistd = twistd or [os.path.join(BIN, "twistd")]

    def start(self) -> "Mailplat":
        """
        Write the configuration, add the users, start C{twistd} and wait
        for the greetings.
        """
        config = os.path.join(self.dir, "mailplat.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(connections=self.connections + 100, throttle=self.connections + 100,
                                  refuse=self.connections + 200))
        # The twistd plugin lives in the tree's twisted/plugins/.
        env = dict(os.environ, PYTHONPATH=self.source + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if self.argon2:
            for user, password in self.users.items():
                subprocess.run([os.path.join(BIN, "mailplat"), "--data-dir", self.dataDir, "user", "add", user,
                                "--password-stdin"], input=password.encode(), check=True,
                               stdout=subprocess.DEVNULL, env=env)
            auth = ["--auth", "mailplat"]
        else:
            auth = ["--auth", "memory:" + ":".join(f"{u}:{p}" for u, p in self.users.items())]
        listen = {name: f"tcp:{port}:interface=127.0.0.1" for name, port in self.ports.items()}
        argv = self.twistd + ["-n", "--pidfile=", "--logfile", self.logPath, "mailplat",
                "--config", config, "--data-dir", self.dataDir, "--workers", str(self.workers)] + auth
        for name in ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"):
            argv += [f"--{name}", listen.get(name, "none")]
        argv += self.extra
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, cwd=self.dir, env=env)
        try:
            for name, port in self.ports.items():
                (waitForSMTP if name in ("smtp", "submission") else waitForGreeting)(port, 60)
        except Exception:
            self.stop()
            raise RuntimeError("mailplat did not start; its log:\n" + self.log()[-3000:])
        return self

    def log(self) -> str:
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""
