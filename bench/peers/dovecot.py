"""
A scratch Dovecot 2.3 (Debian's C{/usr/sbin/dovecot}) for the
benchmarks: its own configuration, state and mail in a scratch
directory, IMAP and POP3 on free ports of 127.0.0.1, never the system
service.  Needs root (Dovecot's mail processes switch to C{nobody}).

The configuration is Debian's defaults plus what a loopback benchmark
needs: plaintext logins (C{ssl = no}), users in a passwd-file with
C{{PLAIN}} secrets, C{maildir:} at the same layout mailplat uses, the
per-user connection limit and the process limits raised to the
connection count, and the login processes in Dovecot's documented
high-performance mode (C{service_count = 0}: one long-lived
C{imap-login} per core instead of one per connection).  Each IMAP or
POP3 session still gets its own C{imap}/C{pop3} process (Debian's
C{client_limit = 1}).
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

from bench.peers import system

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_location = maildir:{mail}/%d/%n/Maildir
mail_max_userip_connections = {connections}
default_process_limit = {connections}
default_client_limit = {connections}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = {cores}
  client_limit = {connections}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
}}
service imap {{
  process_limit = {connections}
}}
service pop3 {{
  process_limit = {connections}
}}
service anvil {{
  client_limit = {anvil}
}}
service auth {{
  client_limit = {anvil}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={mail}/%d/%n
}}
"""


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 free right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForGreeting(port: int, seconds: float = 30.0) -> None:
    """
    Wait until a server greets on C{port} (an IMAP C{* OK} or a POP3 C{+OK}).
    """
    deadline = time.monotonic() + seconds
    last: Optional[Exception] = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if s.recv(200).startswith((b"* OK", b"+OK")):
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"nothing greeted on port {port} within {seconds:.0f} s ({last})")


class Dovecot(system.ScratchServer):
    """
    One scratch Dovecot: L{start}, then L{stop} (or use it as a context
    manager).

    @ivar mailRoot: the mail root; an account's INBOX is
        C{<mailRoot>/<domain>/<local>/Maildir}, owned by C{nobody}.
    @ivar ports: C{{"imap": port, "pop3": port}}.
    """

    name = "dovecot"

    def __init__(self, users: Dict[str, str], connections: int = 1000, scratch: Optional[str] = None) -> None:
        if os.geteuid() != 0:
            raise SystemExit("Dovecot needs root here (its mail processes switch to 'nobody')")
        if not os.path.exists(DOVECOT):
            raise SystemExit("Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")
        pwd.getpwnam("dovenull")
        # Dovecot's UNIX sockets need a short path, and its users must
        # reach the files: a directory of its own in /tmp.
        self.dir = scratch or tempfile.mkdtemp(prefix="mpbdov")
        os.chmod(self.dir, 0o755)
        self.mailRoot = os.path.join(self.dir, "mail")
        os.makedirs(self.mailRoot, exist_ok=True)
        self.users = users
        self.connections = connections
        self.ports = {"imap": freePort(), "pop3": freePort()}
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "Dovecot":
        """
        Write the configuration and the users, hand the mail to
        C{nobody}, start Dovecot in the foreground and wait for its
        greeting on both ports.
        """
        subprocess.run(["chown", "-R", "nobody:nogroup", self.mailRoot], check=True)
        with open(os.path.join(self.dir, "users"), "w") as f:
            for user, password in self.users.items():
                f.write(f"{user}:{{PLAIN}}{password}\n")
        os.chmod(os.path.join(self.dir, "users"), 0o644)
        config = os.path.join(self.dir, "dovecot.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(
                dir=self.dir, mail=self.mailRoot, imap=self.ports["imap"], pop3=self.ports["pop3"],
                connections=self.connections + 100, anvil=self.connections + 1000, cores=os.cpu_count() or 1,
            ))
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", config], env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/bin")},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            waitForGreeting(self.ports["imap"])
            waitForGreeting(self.ports["pop3"])
        except Exception:
            self.stop()
            raise RuntimeError("Dovecot did not start; its log:\n" + self.log()[-3000:])
        return self

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def pids(self) -> List[int]:
        """
        Every process of this Dovecot (the master and its children).
        """
        return system.processTree(self.process.pid) if self.process else []

    def sessionPids(self) -> List[int]:
        """
        The per-session processes (C{imap}, C{pop3}).
        """
        return [p for p in self.pids() if system.commandName(p) in ("imap", "pop3")]
