"""Multi-user etcd: the root login, one user and role per pcocc user, authentication on.

Each pcocc user USER gets an etcd user USER with the role ``pcocc-user-USER``, which may
read and write the keys under ``/pcocc/users/USER/`` and nothing else (pcocc's user
processes use no other key today; ``/pcocc/nodes/`` is for privileged node setup and stays
root's). etcd requires a user ``root`` with the role ``root`` before it turns authentication
on; root may do everything.

The etcd3 package (0.12) has no API for users and roles, but it ships etcd's generated gRPC
stubs (``etcd3.etcdrpc``): this module calls the Auth service through them, on the channel
and login token of a :class:`~pcocc.kv.client.KvClient` (its ``auth_call``). That keeps every password out of
argv (``etcdctl`` takes new passwords on its command line or from a terminal) and reuses
the client's error handling.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pcocc.errors import (
    AlreadyExists,
    ConfigError,
    NotFound,
    PcoccError,
    PermissionDenied,
    UsageError,
)
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.kv.credentials import (
    new_password,
    read_password_file,
    read_user_password_file,
    write_password_file,
    write_user_password_file,
)
from pcocc.kv.etcd3compat import etcdrpc
from pcocc.kv.tls import TlsFiles
from pcocc.userfile import ROOT as ROOT_OWNER
from pcocc.userfile import local_owner

auth_pb2 = etcdrpc.auth_pb2

log = logging.getLogger(__name__)

ROOT_USER = "root"
ROOT_ROLE = "root"
ROLE_PREFIX = "pcocc-user-"
ROOT_PASSWORD_FILE = "etcd-root.password"  #: in the system configuration directory
USER_PASSWORD_DIR = "etcd-users"  #: in the system configuration directory

_PERMISSION_NAMES = {
    auth_pb2.Permission.READ: "read",
    auth_pb2.Permission.WRITE: "write",
    auth_pb2.Permission.READWRITE: "readwrite",
}


def user_role(user: str) -> str:
    """The etcd role of pcocc user ``user``."""
    keys.user_prefix(user)  # refuses names that cannot be a key segment
    return f"{ROLE_PREFIX}{user}"


def prefix_range_end(prefix: str) -> bytes:
    """The end of etcd's key range that holds exactly the keys starting with ``prefix``."""
    data = bytearray(prefix.encode())
    while data and data[-1] == 0xFF:
        data.pop()
    if not data:
        return b"\0"  # every key
    data[-1] += 1
    return bytes(data)


@dataclass(frozen=True)
class Permission:
    kind: str  # read, write or readwrite
    prefix: str  # key prefix (or key, when not a prefix range)


@dataclass(frozen=True)
class EtcdUser:
    name: str
    roles: tuple[str, ...]
    permissions: tuple[Permission, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "permissions": [{"kind": p.kind, "prefix": p.prefix} for p in self.permissions],
        }


@dataclass(frozen=True)
class AddedUser:
    name: str
    role: str
    prefix: str
    password_file: Path
    password_generated: bool


class EtcdAuthAdmin:
    """Users, roles and authentication of one etcd, as root (or anonymously while etcd has
    no authentication yet)."""

    def __init__(self, client: KvClient, root_password_file: Path):
        self.client = client
        self.root_password_file = root_password_file

    @property
    def is_auth_enabled(self) -> bool:
        """True when etcd checks logins (this admin then is logged in as root)."""
        return self.client.is_logged_in

    # connection ----------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        endpoints: str,
        root_password_file: Path,
        *,
        timeout_s: float = 5.0,
        tls: TlsFiles | None = None,
    ) -> EtcdAuthAdmin:
        """Log in as root with the password in ``root_password_file`` when it exists; without
        login when etcd has no authentication yet. ``tls``: for ``https://`` endpoints.

        :raise ConfigError: etcd has authentication on but the root password file is missing
            or not private
        :raise PermissionDenied: etcd refused the root password
        """
        if root_password_file.exists():
            password = read_password_file(root_password_file, what="etcd root password file")
            client = KvClient(
                endpoints,
                timeout_s=timeout_s,
                tls=tls,
                user=ROOT_USER,
                password=password,
                login_hint=f"the root password in {root_password_file} is not etcd's:"
                " give the right file with --root-password-file",
            )
            return cls(client, root_password_file)
        client = KvClient(endpoints, timeout_s=timeout_s, tls=tls)
        admin = cls(client, root_password_file)
        try:
            admin._call("UserList", etcdrpc.AuthUserListRequest(), "list users")
        except PcoccError as err:
            client.close()
            if "user name is empty" in str(err):
                raise ConfigError(
                    f"etcd at {client.endpoint} has authentication enabled and the etcd root"
                    f" password file {root_password_file} does not exist",
                    hint="give the root password file with --root-password-file",
                ) from err
            raise
        return admin

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, what: str) -> Any:
        return self.client.auth_call(method, request, what)

    @contextlib.contextmanager
    def _unless(self, message: str) -> Iterator[None]:
        """Ignore the etcd error whose message contains ``message`` (an idempotent step)."""
        try:
            yield
        except PcoccError as err:
            if message not in str(err):
                raise
            log.debug("ignored: %s", err)

    # authentication ------------------------------------------------------------------------
    def enable_auth(self) -> bool:
        """Create root (role root) with the password of the root password file (written
        first, with a new random password, when it does not exist) and turn authentication
        on. Return False when it was already on.
        """
        if self.is_auth_enabled:
            return False
        if self.root_password_file.exists():
            password = read_password_file(self.root_password_file, what="etcd root password file")
        else:
            password = new_password()
            write_password_file(self.root_password_file, password)
        try:
            self._call(
                "UserAdd", etcdrpc.AuthUserAddRequest(name=ROOT_USER, password=password), "add root"
            )
        except AlreadyExists:
            # set the password we know, or enabling auth could lock everyone out
            self._call(
                "UserChangePassword",
                etcdrpc.AuthUserChangePasswordRequest(name=ROOT_USER, password=password),
                "set the password of root",
            )
        self._call(
            "UserGrantRole",
            etcdrpc.AuthUserGrantRoleRequest(user=ROOT_USER, role=ROOT_ROLE),
            "grant role root to root",
        )
        self._call("AuthEnable", etcdrpc.AuthEnableRequest(), "enable authentication")
        # prove the root password file opens etcd now
        KvClient(
            self.client.endpoints, timeout_s=self.client.timeout_s, user=ROOT_USER,
            password=password,
        ).close()  # fmt: skip
        return True

    # users ---------------------------------------------------------------------------------
    def get_user(self, name: str) -> EtcdUser | None:
        try:
            request = etcdrpc.AuthUserGetRequest(name=name)
            reply = self._call("UserGet", request, f"read user {name}")
        except NotFound:
            return None
        roles = tuple(reply.roles)
        perms: list[Permission] = []
        for role in roles:
            if role == ROOT_ROLE:
                perms.append(Permission("readwrite", "(every key)"))
                continue
            role_reply = self._call(
                "RoleGet", etcdrpc.AuthRoleGetRequest(role=role), f"read role {role}"
            )
            for perm in role_reply.perm:
                key = bytes(perm.key).decode(errors="replace")
                is_prefix = bytes(perm.range_end) == prefix_range_end(key)
                shown = key if not is_prefix or key.endswith("/") else key + "*"
                perms.append(Permission(_PERMISSION_NAMES.get(perm.permType, "?"), shown))
        return EtcdUser(name, roles, tuple(perms))

    def list_users(self) -> list[EtcdUser]:
        reply = self._call("UserList", etcdrpc.AuthUserListRequest(), "list users")
        users = []
        for name in sorted(reply.users):
            user = self.get_user(name)
            if user is not None:
                users.append(user)
        return users

    def add_user(self, name: str, password_file: Path, *, chown_to_user: bool = False) -> AddedUser:
        """Add etcd user ``name`` with role ``pcocc-user-NAME`` (readwrite on its prefix).

        The password is read from ``password_file`` when it exists; otherwise a random one
        is written there (mode 0600; owned by the user when ``chown_to_user``: root then
        follows no link on the way, see :mod:`pcocc.userfile`).

        :raise UsageError: ``name`` is root or not a valid user name
        :raise AlreadyExists: the etcd user exists
        """
        role = user_role(name)
        if name == ROOT_USER:
            raise UsageError("the etcd user root is made by 'pcocc admin etcd-auth enable'")
        if self.get_user(name) is not None:
            raise AlreadyExists(
                f"etcd user {name} already exists",
                hint=f"remove it first with 'pcocc admin etcd-user remove {name}'",
            )
        password, generated = _user_password(password_file, name, chown_to_user)
        prefix = keys.user_prefix(name)
        with self._unless("role name already exists"):
            self._call("RoleAdd", etcdrpc.AuthRoleAddRequest(name=role), f"add role {role}")
        perm = auth_pb2.Permission(
            permType=auth_pb2.Permission.READWRITE,
            key=prefix.encode(),
            range_end=prefix_range_end(prefix),
        )
        self._call(
            "RoleGrantPermission",
            etcdrpc.AuthRoleGrantPermissionRequest(name=role, perm=perm),
            f"grant role {role} readwrite on {prefix}",
        )
        self._call(
            "UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=password), f"add user {name}"
        )
        self._call(
            "UserGrantRole",
            etcdrpc.AuthUserGrantRoleRequest(user=name, role=role),
            f"grant role {role} to {name}",
        )
        return AddedUser(name, role, prefix, password_file, generated)

    def remove_user(self, name: str) -> None:
        """Remove etcd user ``name`` and its pcocc role (the user's keys stay).

        :raise UsageError: ``name`` is root
        :raise NotFound: no such etcd user
        """
        role = user_role(name)
        if name == ROOT_USER:
            raise UsageError("refusing to remove the etcd user root: etcd authentication needs it")
        try:
            request = etcdrpc.AuthUserDeleteRequest(name=name)
            self._call("UserDelete", request, f"remove user {name}")
        except NotFound:
            raise NotFound(
                f"etcd user {name} does not exist",
                hint="see the users with 'pcocc admin etcd-user list'",
            ) from None
        with self._unless("role name not found"):
            request = etcdrpc.AuthRoleDeleteRequest(role=role)
            self._call("RoleDelete", request, f"remove role {role}")


def is_auth_enabled(
    endpoints: str, *, timeout_s: float = 5.0, tls: TlsFiles | None = None
) -> bool:
    """Whether etcd at ``endpoints`` checks logins (asked without logging in).

    :raise ServiceUnavailable: etcd does not answer
    """
    with KvClient(endpoints, timeout_s=timeout_s, tls=tls) as client:
        try:
            client.auth_call("UserList", etcdrpc.AuthUserListRequest(), "list users")
        except PermissionDenied:
            return True
    return False


def _user_password(path: Path, user: str, in_users_dir: bool) -> tuple[str, bool]:
    """The password in ``path``, or a new one written there; True when it is new.

    ``in_users_dir``: ``path`` is the user's (``--password-file``). Root then reads and
    writes it through :mod:`pcocc.userfile`, which follows no link the user controls, and
    the file is the user's (root's, in root's directories only, without a local account).
    """
    if not in_users_dir or os.geteuid() != 0:
        generated = not path.exists()
        if generated:
            write_password_file(path, new_password())
        return read_password_file(path), generated
    owner = local_owner(user)
    if owner is None:
        log.info("no local user %s: %s stays owned by root", user, path)
        owner = ROOT_OWNER
    try:
        return read_user_password_file(path, owner), False
    except FileNotFoundError:
        pass
    password = new_password()
    write_user_password_file(path, password, owner)
    return password, True


def default_root_password_file(system_dir: Path) -> Path:
    return system_dir / ROOT_PASSWORD_FILE


def default_user_password_file(system_dir: Path, user: str) -> Path:
    keys.user_prefix(user)  # a name that is safe in a path too
    return system_dir / USER_PASSWORD_DIR / f"{user}.password"
