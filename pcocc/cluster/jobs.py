"""What ``pcocc alloc``, ``batch``, ``internal launcher`` and ``internal run`` do.

The CLI parses options and calls these; they bind the runtime to the configuration, the
batch manager, etcd and QEMU (through :mod:`pcocc.cluster.adapters`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc import fields, selfcmd, timing
from pcocc.cluster import adapters, batchadapter, earlynodes, rundir, vmsettings
from pcocc.cluster.definition import ClusterDefinition, build_definition
from pcocc.cluster.launcher import Launcher, LaunchSettings
from pcocc.cluster.lease import lease_ttl_s
from pcocc.cluster.noderun import DEFINITION_VAR, decode_definition, encode_definition
from pcocc.cluster.ports import AllocRequest
from pcocc.cluster.record import MAX_NAME
from pcocc.cluster.stored import check_settings
from pcocc.cluster.sshkeys import ensure_user_key
from pcocc.errors import UsageError
from pcocc.kv import connect
from pcocc.kv.endpoints import ENDPOINTS_VAR

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.repo.meta import ImageMeta
    from pcocc.repo.reposet import RepoSet

log = logging.getLogger(__name__)

#: the checkpoint directory the launcher's VMs restore from (``alloc``/``batch -r DIR``)
RESTORE_VAR = "PCOCC_RESTORE_CKPT"
BOOT_TIMEOUT_VAR = "PCOCC_BOOT_TIMEOUT"
DEFAULT_BOOT_TIMEOUT_S = 600.0


def boot_timeout_s(env: Mapping[str, str]) -> float:
    text = env.get(BOOT_TIMEOUT_VAR)
    if not text:
        return DEFAULT_BOOT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise UsageError(f"{BOOT_TIMEOUT_VAR}={text!r} is not a positive number of seconds")
    return value


def prepare_definition(
    config: Config,
    spec: str,
    *,
    cores: int | None,
    images: Sequence[str],
    mounts: Sequence[str],
    user_data_file: str | None,
    fetch: Callable[[RepoSet, str], ImageMeta] | None = None,
) -> ClusterDefinition:
    """Check the whole definition (templates, images, files) before anything is allocated.

    :param fetch: gets the images of URL or discoverable name that no repository holds
        (see adapters.image_checker); without it they are not found
    """
    definition = build_definition(
        spec,
        adapters.resolved_templates(config),
        cores=cores,
        images=images,
        mounts=mounts,
        user_data_file=user_data_file,
        ssh_authorized_keys=[ensure_user_key()],
        owner=adapters.user_name(),
        boot_timeout_s=boot_timeout_s(os.environ),
        check_image=adapters.image_checker(config, fetch),
        networks=config.networks,
    )
    adapters.check_shares_possible(definition)
    vmsettings.check_drives([(vm.template, vm.rank, vm.settings) for vm in definition.vms])
    check_full_node(definition, batchadapter.batch_manager(config).name)
    return definition


def check_restore(config: Config, definition: ClusterDefinition, ckpt: str) -> str:
    """Check, before anything is allocated, that ``definition`` can be restored from the
    checkpoint ``ckpt``; return its absolute path (the nodes may start elsewhere).

    :raise NotFound, Corrupt: no checkpoint there, or a damaged one
    :raise UsageError: the definition, a template, an image or QEMU differ
    """
    from pathlib import Path

    from pcocc.cluster.ckptrestore import check_restore as check
    from pcocc.repo.digest import from_hex
    from pcocc.vm.migrate import installed_qemu_version

    root = Path(os.path.abspath(ckpt))
    binaries = {vm.settings.get("qemu-bin") or "qemu-system-x86_64" for vm in definition.vms}
    versions = {installed_qemu_version(b) for b in sorted(binaries)}
    check(root, definition,
          lambda uri: from_hex(adapters.image_top_layer(config, uri).name),
          versions.pop() if len(versions) == 1 else None)
    return str(root)


def check_full_node(definition: ClusterDefinition, batch_type: str) -> None:
    """Without a batch system every VM runs on this host: a full-node VM may only be alone.

    :raise UsageError: naming the template
    """
    if not definition.full_node or batch_type != "local" or definition.size == 1:
        return
    template = next(vm.template for vm in definition.vms if vm.settings.get("full-node"))
    raise UsageError(
        f"template '{template}' sets full-node, but without Slurm (batch type local) all"
        f" {definition.size} VMs of the cluster would share this host",
        hint="start a single VM, or run under Slurm (batch.yaml: type: slurm)",
    )


def host_script_command(value: str) -> str:
    """The shell command that runs ``pcocc batch -E VALUE`` on the first node.

    As in pcocc 0.7, VALUE is a script file of this host: its text goes into the job and
    runs there as an executable (its ``#!`` line chooses the interpreter; ``sh`` without
    one). For the command lines of earlier versions of this pcocc, VALUE that names no file
    and has a space (``-E 'hostname -f'``) is a shell command line; a single word naming no
    file is refused, as it could be either.

    :raise UsageError: naming VALUE
    """
    path = Path(value)
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UsageError(f"-E {value}: cannot read the script: {err.strerror}") from err
        # base64: the script's text never meets the shell that unpacks it
        packed = base64.b64encode(data).decode()
        return (
            'f=$(mktemp) || exit 1; trap \'rm -f "$f"\' EXIT; '
            f'printf %s {packed} | base64 -d > "$f" && chmod 700 "$f" && "$f"'
        )
    if path.exists():
        raise UsageError(f"-E {value}: not a regular file", hint="give a script file")
    if not any(c.isspace() for c in value):
        raise UsageError(
            f"-E {value}: no such script file",
            hint="give a script file; a shell command line is only taken with a space in it,"
            " e.g. -E 'hostname -f'",
        )
    return value


#: ends the here-document that carries a ``batch -b`` script (never a line of base64)
SCRIPT_END = "PCOCC_SCRIPT"


def read_guest_script(path: str) -> bytes:
    """The script of ``pcocc batch -b PATH``, read when the job is submitted.

    :raise UsageError: naming the file
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UsageError(f"-b '{path}': cannot read it: {err.strerror}") from err


def guest_script_command(script: bytes) -> str:
    """The job's command for ``pcocc batch -b``: run ``script`` in vm0 through its guest
    agent (``pcocc exec -i 0 --script -``) once the cluster runs; its exit status is the
    job's. The script travels in the job script itself, base64 in a here-document."""
    argv = [*selfcmd.pcocc_argv(), "exec", "-i", "0", "--script", "-"]
    body = base64.encodebytes(script).decode()
    return f"base64 -d <<'{SCRIPT_END}' | {shlex.join(argv)}\n{body}{SCRIPT_END}\n"


def launcher_argv(
    command: str | None, *, log_args: Sequence[str] = (), hold: bool = False
) -> list[str]:
    """argv of the launcher; ``log_args`` (--debug, -v, -q) as given to this pcocc."""
    argv = [*selfcmd.module_argv(), *log_args, "internal", "launcher"]
    if command is not None:
        argv += ["-E", command]
    if hold:
        argv.append("--hold")
    return argv


#: the job name of a cluster when the user gives none (pcocc 0.7's)
DEFAULT_JOB_NAME = "pcocc"
#: the comment of a cluster's job, by which ``pcocc ps -a`` tells clusters from other jobs
#: (a ``--comment`` of the user's replaces it: that job is then not listed)
CLUSTER_COMMENT = "pcocc-cluster"


def _request(
    definition: ClusterDefinition, batch_args: Sequence[str], job_name: str | None = None
) -> AllocRequest:
    """One task per VM; with full-node, one whole node per VM (the node's CPUs go to its
    VM, so the task asks for one CPU and the exclusive allocation brings the rest)."""
    full = definition.full_node
    return AllocRequest(
        ntasks=definition.size,
        cpus_per_task=1 if full else definition.cores,
        job_name=job_name or DEFAULT_JOB_NAME,
        extra_args=tuple(batch_args),
        one_per_node=full,
        comment=CLUSTER_COMMENT,
        node_setup=definition.node_setup,
    )


def alloc(
    config: Config,
    definition: ClusterDefinition,
    batch_args: Sequence[str],
    command: str | None,
    *,
    log_args: Sequence[str] = (),
    restore: str | None = None,
    job_name: str | None = None,
) -> int:
    """Allocate and run the launcher interactively inside; return its exit status.

    :param restore: a checkpoint checked by :func:`check_restore`, to restore the VMs from
    """
    timing.mark("alloc: configuration loaded, allocating", started="alloc: process started")
    batch = batchadapter.batch_manager(config)
    env = {
        DEFINITION_VAR: encode_definition(definition),
        **selfcmd.config_env(str(config.system_dir), str(config.user_dir)),
        **({RESTORE_VAR: restore} if restore else {}),
    }
    os.environ.update(env)  # salloc passes our environment to the launcher
    return batch.allocate(
        _request(definition, batch_args, job_name),
        launcher_argv(command, log_args=log_args),
        env=env,
    )


def batch_script(
    definition: ClusterDefinition,
    command: str | None,
    config: Config,
    log_args: Sequence[str] = (),
    restore: str | None = None,
) -> str:
    """The job script of ``pcocc batch``: it runs the launcher with the definition inline."""
    env = selfcmd.config_env(str(config.system_dir), str(config.user_dir))
    if restore:
        env[RESTORE_VAR] = restore
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    return (
        "#!/bin/sh\n"
        "# pcocc virtual cluster: "
        + definition.spec.replace("\n", " ")
        + "\n"
        + exports
        + f"export {DEFINITION_VAR}={shlex.quote(encode_definition(definition))}\n"
        + "exec "
        + shlex.join(launcher_argv(command, log_args=log_args, hold=True))
        + "\n"
    )


def submit(
    config: Config,
    definition: ClusterDefinition,
    batch_args: Sequence[str],
    command: str | None,
    log_args: Sequence[str] = (),
    restore: str | None = None,
    job_name: str | None = None,
) -> str:
    """Submit a batch job running the cluster and ``command``; return the job id."""
    batch = batchadapter.batch_manager(config)
    script = batch_script(definition, command, config, log_args, restore)
    return batch.submit(_request(definition, batch_args, job_name), script)


def run_launcher(
    config: Config,
    command: str | None,
    *,
    report: Callable[[str], None],
    log_args: Sequence[str] = (),
    hold: bool = False,
) -> int:
    """``pcocc internal launcher``: the cluster's life inside its allocation."""
    timing.mark("launcher: imported, configuration loaded", started="launcher: process started")
    text = os.environ.get(DEFINITION_VAR)
    if not text:
        raise UsageError(
            f"no cluster definition ({DEFINITION_VAR} is not set)",
            hint="'pcocc internal launcher' is started by 'pcocc alloc' or 'pcocc batch'",
        )
    definition = decode_definition(text, check=False)  # checked below, nodes started
    os.umask(0o077)  # run files, sockets, logs, the private etcd: for this user only
    batch = batchadapter.batch_manager(config)
    batchid = batch.job_id_from_env(os.environ)
    if not batchid:
        raise UsageError("the launcher does not run inside a job (no job id in the environment)")
    user = adapters.user_name()
    ttl_s = lease_ttl_s(os.environ)
    cluster_dir = rundir.cluster_dir(batchid)
    env = {k: v for k, v in os.environ.items() if k not in (DEFINITION_VAR, RESTORE_VAR)}
    restore = os.environ.get(RESTORE_VAR)
    node_env = {DEFINITION_VAR: text}  # QEMU starts before etcd is used (see noderun)
    node_argv = [*selfcmd.module_argv(), *log_args]
    switch_argv = [*node_argv, "internal", "vswitch"]
    node_argv += ["internal", "run", *(["--restore", restore] if restore else [])]
    try:
        with contextlib.ExitStack() as stack:
            tasks = None
            if earlynodes.can_start_early(batch, definition, config.batch.etcd, env):
                tasks = stack.enter_context(earlynodes.early_tasks(
                    batch, definition, batchid, node_argv, {**env, **node_env}, cluster_dir))
            check_settings(definition)  # while the nodes start: they take it from us
            kv_env = stack.enter_context(connect.etcd_for_job(
                cluster_dir, env, user, config.batch.etcd, batch.controller_hosts))
            env.update(kv_env)
            kv = stack.enter_context(contextlib.closing(
                connect.EtcdKv.from_env(env, config.batch.etcd)))
            timing.mark("launcher: etcd answers")
            settings = LaunchSettings(
                user=user,
                batchid=batchid,
                node_argv=node_argv,
                command=command,
                env=env,
                hold=hold,
                remove_run_dir=False,
                lease_ttl_s=ttl_s,
                switch_argv=switch_argv,
                node_env=node_env,
                job_name=fields.one_line(batch.job_name_from_env(env), MAX_NAME),
            )
            return Launcher(kv, batch, definition, settings, report=report, tasks=tasks).run()
    finally:
        rundir.remove_cluster_dir(batchid)


def run_vswitch(config: Config, batchid: str, net: str) -> int:
    """``pcocc internal vswitch``: the switch of one private network (started by the
    launcher); returns 0 when the cluster ends or on SIGTERM."""
    from pcocc.signals import Interrupted, raising_on_signals
    from pcocc.net.private import node_address, run_switch

    endpoints = connect.configured_endpoints(config.batch.etcd, os.environ)
    if not endpoints:
        raise UsageError(
            f"no etcd to use: {ENDPOINTS_VAR} is not set",
            hint="'pcocc internal vswitch' is started by 'pcocc internal launcher'",
        )
    address = node_address({**os.environ, ENDPOINTS_VAR: endpoints})
    kv = connect.open_kv(endpoints, config.batch.etcd, label=f"switch of {net}")
    try:
        with raising_on_signals():
            return run_switch(
                kv, adapters.user_name(), batchid, net, address, lease_ttl_s(os.environ)
            )
    except Interrupted:
        return 0
    finally:
        kv.close()
