"""
Checks made before the server starts, each ending the start with one clear
line (a L{ConfigError}) instead of failing later on the first message or
login:

  - every DKIM signing key in C{<dataDir>/dkim/} loads (L{checkDKIMKeys});
  - when twistd is asked to drop privileges (C{-u USER -g GROUP}, run as
    root), the data directory and what is directly in it are writable by
    that user (L{checkDataDirFor}).

A bad TLS certificate or key already stops the start in
L{mailplat.tls.contextForConfig}; L{startupChecks} runs it too so that one
call covers all.

twistd binds the listeners as root (in C{privilegedStartService}) and
switches user only after C{makeService} returned, so everything the server
makes while being built (the store's directories and databases, the
queue, a self-signed certificate) would belong to root and be unwritable
afterwards.  L{runAs} builds it with the target user's effective ids.

The lead calls both from C{mailplat.service.makeService}, with twistd's
C{uid}/C{gid} (the service maker's options hang below twistd's as
C{options.parent})::

    parent = getattr(options, "parent", None) or {}
    uid, gid = parent.get("uid"), parent.get("gid")
    config = options.resolveConfig()
    startupChecks(config, uid, gid)
    with runAs(uid, gid):
        return buildService(config)

(with C{--workers} above 1, C{Server.service} binds the shared sockets
itself, so for privileged ports that call must stay outside L{runAs}).
"""

import contextlib
import os
import pwd
import stat
from typing import Any, Iterator, Optional

from mailplat.errors import ConfigError


def checkDKIMKeys(dataDir: str) -> int:
    """
    Load every C{*.key} file of C{<dataDir>/dkim/} the way signing will
    (dkimpy's PEM parser), so that a broken key stops the start.

    @return: how many keys were checked.
    @raise ConfigError: a key file cannot be read or is not a usable PEM
        private key; the message names the file.
    """
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    directory = os.path.join(dataDir, "dkim")
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise ConfigError(f"DKIM key directory {directory!r}: cannot list it ({e.strerror})") from None
    count = 0
    for name in names:
        if not name.endswith(".key"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigError(f"DKIM key {path!r}: cannot read it ({e.strerror})") from None
        try:
            parse_pem_private_key(pem)
        except (UnparsableKeyError, ValueError, IndexError, TypeError) as e:
            reason = " ".join(str(e).split()) or e.__class__.__name__
            raise ConfigError(f"DKIM key {path!r}: not a usable PEM RSA private key ({reason})") from None
        count += 1
    return count


def _writableBy(st: os.stat_result, uid: int, gids: "set[int]") -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def checkDataDirFor(dataDir: str, uid: Optional[int], gid: Optional[int] = None) -> None:
    """
    When the server will run as C{uid} (twistd C{-u}), check that it can
    write the data directory and every entry directly in it (the password
    file, the queue, the TLS and DKIM directories, the store's files).

    @param uid: the user to run as; L{None}: no privilege drop, nothing
        to check.
    @param gid: the group to run as (twistd C{-g}); the user's primary
        group when L{None}.
    @raise ConfigError: one line naming the data directory (or the entry)
        and the user, with the command that fixes it.
    """
    if uid is None:
        return
    try:
        entry = pwd.getpwuid(uid)
        name, primary = entry.pw_name, entry.pw_gid
    except KeyError:
        name, primary = str(uid), None
    gids = {g for g in (gid, primary) if g is not None}
    try:
        gids.update(os.getgrouplist(name, primary if primary is not None else (gid or 0)))
    except (OSError, TypeError):
        pass
    path = os.path.abspath(dataDir)
    fix = f"chown -R {name} {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        try:
            if _writableBy(os.stat(parent), uid, gids):
                return
        except OSError:
            pass
        raise ConfigError(f"data directory {path!r} does not exist and user {name} (uid {uid}) cannot create it: "
                          f"mkdir {path} && {fix}")
    if not stat.S_ISDIR(st.st_mode) or not _writableBy(st, uid, gids):
        raise ConfigError(f"data directory {path!r} is not writable by user {name} (uid {uid}): {fix}")
    for child in sorted(os.listdir(path)):
        childPath = os.path.join(path, child)
        try:
            childStat = os.lstat(childPath)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(childStat.st_mode):
            continue
        if not _writableBy(childStat, uid, gids):
            raise ConfigError(f"data directory {path!r}: {child!r} is not writable by user {name} (uid {uid}): {fix}")


def startupChecks(config: Any, uid: Optional[int] = None, gid: Optional[int] = None) -> None:
    """
    Every start-time check: the data directory for the user twistd will
    run as, the TLS files, the DKIM keys.

    @param config: the resolved L{mailplat.config.Config}.
    @raise ConfigError: the first problem, as one line.
    """
    from mailplat.tls import contextForConfig

    checkDataDirFor(config.dataDir, uid, gid)
    where = config.source or "command line"
    if config.tlsCert or config.tlsKey or config.tlsSNI:
        contextForConfig(config.dataDir, config.hostname, config.tlsCert, config.tlsKey, config.tlsSNI,
                         where=f"{where}: tls")
    checkDKIMKeys(config.dataDir)


@contextlib.contextmanager
def runAs(uid: Optional[int], gid: Optional[int] = None) -> Iterator[None]:
    """
    Within the block, act (create files) with effective user C{uid} and
    group C{gid} (the user's primary group when L{None}); afterwards, root
    again, so that twistd can still bind privileged ports and then switch
    for good.  Nothing happens when C{uid} is L{None} or the process is not
    root.
    """
    if uid is None or os.geteuid() != 0:
        yield
        return
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = os.getegid()
    oldGid = os.getegid()
    os.setegid(gid)
    try:
        os.seteuid(uid)
        try:
            yield
        finally:
            os.seteuid(0)
    finally:
        os.setegid(oldGid)
