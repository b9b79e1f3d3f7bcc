"""Who pcocc logs in to etcd as, and the private files that hold etcd passwords.

The login comes from the environment first: ``$PCOCC_ETCD_JOB_LOGIN`` (``user:password``, the
login of a job's private etcd, set by the launcher for the job's processes), then
``$PCOCC_ETCD_USER`` and ``$PCOCC_ETCD_PASSWORD``; then from the ``etcd`` section of
batch.yaml (``user``, ``password-file``). User commands run outside the job read the job's
login from the ``etcd-login`` file of its run directory (:func:`read_job_login_file`). Node processes
started by srun load the same configuration, so they find the password the same way: it
never travels in argv, and pcocc never logs it, prints it or stores it in etcd.

A password file must be private to its owner (no permission for group or others), like an
ssh key: pcocc refuses any other.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import fsutil, userfile
from pcocc.config.model import EtcdConfig
from pcocc.errors import ConfigError
from pcocc.userfile import Owner

USER_VAR = "PCOCC_ETCD_USER"
PASSWORD_VAR = "PCOCC_ETCD_PASSWORD"
#: ``user:password`` of the job's private etcd (never in argv: see pcocc.kv.private)
JOB_LOGIN_VAR = "PCOCC_ETCD_JOB_LOGIN"
#: what to check when etcd refuses a login given by the environment
DEFAULT_LOGIN_HINT = f"check {USER_VAR}/{PASSWORD_VAR} and the role of the user"


def refusal_hint(who: str, *, anonymous: bool, role_denied: bool, login_hint: str) -> str:
    """What to do when etcd refuses ``who`` (both etcd clients say it the same way).

    :param anonymous: no login was used (etcd has authentication on)
    :param role_denied: logged in, but the user's role does not cover the key
    :param login_hint: what to check when the login itself was refused
    """
    if anonymous:
        return (
            "etcd has authentication enabled: set user and password-file in the"
            f" etcd section of batch.yaml (or {USER_VAR}/{PASSWORD_VAR})"
        )
    if role_denied:
        from pcocc.kv import keys

        return (
            f"the etcd role of {who} does not allow it"
            f" (a pcocc user may use only {keys.user_prefix('<user>')})"
        )
    return login_hint


@dataclass(frozen=True)
class EtcdLogin:
    """A user name and its password; ``source`` says where the password came from."""

    user: str
    password: str = field(repr=False)
    source: str = ""
    #: the login of a job's private etcd: a one-job random secret for an etcd that holds
    #: only that job (allowed over plain http between the job's nodes)
    private: bool = False

    @property
    def hint(self) -> str:
        """What to check when etcd refuses this login."""
        where = self.source or f"{USER_VAR}/{PASSWORD_VAR}"
        return f"check the etcd user {self.user!r}, its password ({where}) and its role"


def expand_path(value: str, base_dir: Path | None = None) -> Path:
    """A path from the configuration: ``~`` expanded, ``%%{`` -> ``%{``, relative to
    ``base_dir`` (the directory of the file that set it) when given."""
    path = Path(os.path.expanduser(value.replace("%%{", "%{")))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def read_password_file(path: str | os.PathLike[str], *, what: str = "etcd password file") -> str:
    """The password in ``path`` (its first line, without the line end).

    :raise ConfigError: the file is missing, unreadable, empty, or open to group or others
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(
            f"{what} {path} does not exist",
            hint="create it (mode 600) or fix password-file in batch.yaml",
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        _check_private(path, info.st_mode, what)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(65536)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    finally:
        os.close(fd)
    return _password_in(path, data, what)


def _password_in(path: Path, data: bytes, what: str) -> str:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"{what} {path} is empty", hint="write the password on its first line")
    return password


def read_user_password_file(path: Path, owner: Owner, *, what: str = "etcd password file") -> str:
    """As :func:`read_password_file`, for root reading the file of ``owner`` (a user's, or
    root's own in root's directories): no link is followed (see :mod:`pcocc.userfile`).

    :raise FileNotFoundError: the file does not exist
    :raise PermissionDenied: a link, or a file or directory of someone else, on the way
    """
    mode, data = userfile.read_file(path, owner, what=what)
    _check_private(path, mode, what)
    return _password_in(path, data, what)


def write_user_password_file(path: Path, password: str, owner: Owner) -> None:
    """Write ``password`` to ``owner``'s file ``path`` (mode 0600, missing directories 0700
    and theirs) as root, without following a link (see :mod:`pcocc.userfile`)."""
    userfile.write_file(path, (password + "\n").encode(), owner, what="etcd password file")


def _check_private(path: Path, mode: int, what: str) -> None:
    if mode & 0o077 == 0:
        return
    access = "readable" if mode & 0o044 else "writable" if mode & 0o022 else "usable"
    raise ConfigError(
        f"{what} {path} is {access} by group or others (mode {stat.S_IMODE(mode):04o}):"
        f" run 'chmod 600 {path}'"
    )


def write_password_file(path: str | os.PathLike[str], password: str) -> None:
    """Write ``password`` to ``path`` atomically, mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fsutil.write_atomic(path, password + "\n", mode=0o600)


def new_password() -> str:
    """A random password (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def parse_job_login(text: str, where: str) -> EtcdLogin:
    """``user:password`` (the job login's form in the environment and its file).

    :raise ConfigError: not that form (``where`` names the variable or file)
    """
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password or any(c.isspace() for c in user + password):
        raise ConfigError(
            f"{where} does not hold a job's etcd login (user:password)",
            hint="it is written by 'pcocc internal launcher'; do not edit it",
        )
    return EtcdLogin(user, password, where, private=True)


def format_job_login(user: str, password: str) -> str:
    return f"{user}:{password}"


def read_job_login_file(path: str | os.PathLike[str]) -> EtcdLogin:
    """The login in a job's ``etcd-login`` file (private to its owner, like a password file).

    :raise ConfigError: missing, unreadable, open to others, or malformed
    """
    text = read_password_file(path, what="job etcd login file")
    return parse_job_login(text, f"job etcd login file {path}")


def check_login_transport(endpoint: str, login: EtcdLogin | None) -> None:
    """Refuse to send a password in clear over the network.

    A login over plain ``http://`` is allowed to a loopback address only, or for a job's
    private etcd (``login.private``: its secret is worth nothing beyond the job and stays
    on the job's nodes).

    :raise ConfigError: a password login to a non-loopback ``http://`` endpoint
    """
    from pcocc.kv.endpoints import parse_endpoint
    from pcocc.netaddr import is_loopback_host

    if login is None or login.private:
        return
    ep = parse_endpoint(endpoint)
    if ep.scheme == "http" and not is_loopback_host(ep.host):
        raise ConfigError(
            f"refusing to send the etcd password of {login.user!r} in clear to {endpoint}",
            hint="configure TLS for etcd in batch.yaml (ca-cert, and cert and key if etcd"
            " asks for client certificates)",
        )


def etcd_login(etcd: EtcdConfig, env: Mapping[str, str]) -> EtcdLogin | None:
    """The login to use, or None to connect anonymously.

    :param etcd: batch.yaml's ``etcd`` section (a relative ``password-file`` starts at its
        ``base_dir``)
    :raise ConfigError: the password file is missing, unreadable or not private
    """
    if env.get(JOB_LOGIN_VAR):
        return parse_job_login(env[JOB_LOGIN_VAR], f"${JOB_LOGIN_VAR}")
    user = env.get(USER_VAR) or etcd.user
    if not user:
        return None
    user = str(user).replace("%%{", "%{")
    if env.get(PASSWORD_VAR):
        return EtcdLogin(user, env[PASSWORD_VAR], PASSWORD_VAR)
    if (env.get(USER_VAR) and env[USER_VAR] != etcd.user) or not etcd.password_file:
        # a user without a password: etcd refuses it, with the hint of EtcdLogin
        return EtcdLogin(user, "", f"no password: set {PASSWORD_VAR} or etcd.password-file")
    path = expand_path(etcd.password_file, etcd.base_dir)
    return EtcdLogin(user, read_password_file(path), f"password file {path}")
