"""
A scratch Postfix (Debian's C{/usr/sbin/postfix}, 3.7) for the SMTP
benchmarks, and Postfix's C{smtp-sink} as the protocol-only ceiling.

L{Postfix} writes its own C{config_directory} (C{main.cf}, C{master.cf},
the mailbox map), C{queue_directory} and C{data_directory} under a
scratch directory, listens on a free port of 127.0.0.1 only, and is
started and stopped with C{postfix -c DIR start} / C{stop}: never the
system service.  Mail for the users given is delivered by Postfix's
C{virtual(8)} agent into C{<mailRoot>/<domain>/<local>/Maildir/} (the
map's trailing slash asks for Maildir), the layout mailplat's Maildir
store uses, owned by C{nobody}.

Everything else is Postfix's default (Debian's C{main.cf} minus what
names this host), with two changes a loopback benchmark needs:
C{chroot} off in C{master.cf} (the chroot would need copies of the
system files inside the scratch queue), and the log written to a file
in the scratch directory (C{maillog_file}, through C{postlogd}) instead
of syslog.  Postfix's flow control (C{in_flow_delay = 1s}: C{smtpd}
pauses before a message while the queue manager falls behind) is left
on, as shipped.

Postfix answers 250 once the queue file is fsynced; delivery into the
Maildir happens afterwards.  L{Postfix.delivered} counts the files in a
user's Maildir so that a benchmark can also time when all of them are
there.

Needs root (the master runs as root; C{mail_owner} is C{postfix}, the
setgid group C{postdrop}, both made by Debian's package).
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, Iterable, List, Optional

from bench.peers import system

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
readme_directory = no
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{dir}/config/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
"""

# Debian's master.cf for the services a Maildir delivery uses, chroot off.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForSMTP(port: int, seconds: float = 30.0) -> None:
    """
    Wait until a server greets with C{220} on 127.0.0.1:C{port}.
    """
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                greeting = s.recv(200)
                if greeting.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = greeting
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"nothing greeted with 220 on port {port} within {seconds:.0f} s ({last!r})")


def countMaildir(path: str) -> int:
    """
    How many messages the Maildir at C{path} holds (C{new/} and C{cur/});
    0 if it does not exist yet.
    """
    total = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                total += sum(1 for _ in entries)
        except FileNotFoundError:
            pass
    return total


def accountMaildir(root: str, address: str) -> str:
    """
    C{<root>/<domain>/<local>/Maildir}: where both mailplat's Maildir store
    and this Postfix keep an address's INBOX.
    """
    local, _, domain = address.rpartition("@")
    return os.path.join(root, domain, local, "Maildir")


class Postfix:
    """
    One scratch Postfix delivering to Maildir: L{start}, then L{stop} (or
    use it as a context manager).

    @ivar port: its SMTP port on 127.0.0.1.
    @ivar mailRoot: C{virtual_mailbox_base}; an address's Maildir is
        L{maildir}C{(address)}.
    """

    name = "postfix"

    def __init__(self, addresses: Iterable[str], scratch: Optional[str] = None,
                 settings: Optional[Dict[str, str]] = None) -> None:
        """
        @param addresses: the recipients it delivers for (their domains
            become C{virtual_mailbox_domains}).
        @param settings: more C{main.cf} lines (name to value), e.g.
            C{{"in_flow_delay": "0"}}.
        """
        if os.geteuid() != 0:
            raise SystemExit("the scratch Postfix needs root (its master runs as root, mail_owner postfix)")
        if not os.path.exists(POSTFIX):
            raise SystemExit("Postfix is not installed (apt-get install postfix)")
        pwd.getpwnam("postfix")
        self.addresses = list(addresses)
        self.settings = dict(settings or {})
        # The postfix user must reach the queue: a 0755 directory in /tmp.
        self.dir = scratch or tempfile.mkdtemp(prefix="mpbpf")
        os.chmod(self.dir, 0o755)
        self.config = os.path.join(self.dir, "config")
        self.mailRoot = os.path.join(self.dir, "mail")
        self.port = freePort()
        self.started = False

    def maildir(self, address: str) -> str:
        return accountMaildir(self.mailRoot, address)

    def delivered(self, address: str) -> int:
        """
        How many messages are in C{address}'s Maildir now.
        """
        return countMaildir(self.maildir(address))

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [POSTFIX, "-c", self.config, *args]
        # The postfix command writes its errors to stderr only when that is
        # a terminal (otherwise to syslog, which may not exist): give it
        # one with script(1) when there is one.
        if shutil.which("script"):
            argv = ["script", "-qec", " ".join(argv), "/dev/null"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=check,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "dumb"})

    def start(self) -> "Postfix":
        """
        Write the configuration, make the Maildirs' parents for C{nobody},
        C{postfix check} (which also makes the queue directories with their
        owners) and C{postfix start}; wait for the greeting.
        """
        nobody = pwd.getpwnam("nobody")
        for sub in ("config", "spool", "data", "mail"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        domains = sorted({a.rpartition("@")[2] for a in self.addresses})
        main = MAIN_CF.format(dir=self.dir, mail=self.mailRoot, domains=", ".join(domains),
                              uid=nobody.pw_uid, gid=nobody.pw_gid)
        main += "".join(f"{k} = {v}\n" for k, v in self.settings.items())
        with open(os.path.join(self.config, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.config, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        with open(os.path.join(self.config, "vmailbox"), "w") as f:
            for address in self.addresses:
                local, _, domain = address.rpartition("@")
                f.write(f"{address} {domain}/{local}/Maildir/\n")
        for address in self.addresses:
            os.makedirs(os.path.dirname(self.maildir(address)), exist_ok=True)
        subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", self.mailRoot], check=True)
        subprocess.run(["chown", "postfix", os.path.join(self.dir, "data")], check=True)
        checked = self._postfix("check", check=False)
        if checked.returncode != 0:
            raise RuntimeError("postfix check failed:\n" + checked.stdout.decode(errors="replace"))
        started = self._postfix("start", check=False)
        if started.returncode != 0:
            raise RuntimeError("postfix start failed:\n" + started.stdout.decode(errors="replace")
                               + self.log()[-3000:])
        self.started = True
        try:
            waitForSMTP(self.port)
        except Exception:
            self.stop()
            raise RuntimeError("Postfix did not greet; its log:\n" + self.log()[-3000:])
        return self

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "maillog"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def masterPid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.dir, "spool", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> List[int]:
        """
        The master and its children (C{smtpd}, C{cleanup}, C{qmgr}, ...).
        """
        master = self.masterPid()
        return system.processTree(master) if master else []

    def stop(self) -> None:
        """
        C{postfix stop} (the master stops its children) and wait until the
        master is gone.
        """
        if not self.started:
            return
        master = self.masterPid()
        self._postfix("stop", check=False)
        deadline = time.monotonic() + 30
        while master and time.monotonic() < deadline and os.path.exists(f"/proc/{master}"):
            time.sleep(0.1)
        self.started = False

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class SMTPSink:
    """
    Postfix's C{smtp-sink}: one event-driven process that speaks SMTP (with
    PIPELINING) and throws every message away, the ceiling of what a
    client and the loopback can do with no server work at all.

    @ivar port: its port on 127.0.0.1.
    """

    name = "smtp-sink"

    def __init__(self, backlog: int = 256) -> None:
        if not os.path.exists(SMTP_SINK):
            raise SystemExit("smtp-sink is not installed (it comes with postfix)")
        self.port = freePort()
        self.backlog = backlog
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "SMTPSink":
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [f"127.0.0.1:{self.port}", str(self.backlog)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            waitForSMTP(self.port)
        except Exception:
            self.stop()
            raise
        return self

    def pids(self) -> List[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()

    def __enter__(self) -> "SMTPSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
