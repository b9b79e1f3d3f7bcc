"""The command table of ``pcocc``: plain data, read by the lazy groups of :mod:`pcocc.cli.app`.

Each entry is ``name -> (module:attribute, one-line help)``; the order is the order of
``--help``. The help text lives here so that ``pcocc --help`` imports no command module.
"""

from __future__ import annotations

#: the subcommands of ``pcocc``
COMMANDS: dict[str, tuple[str, str]] = {
    "alloc": ("pcocc.cli.cluster:alloc", "Run a virtual cluster interactively"),
    "batch": ("pcocc.cli.cluster:batch", "Run a virtual cluster in a batch job"),
    "ps": ("pcocc.cli.cluster:ps", "List your running virtual clusters"),
    "ssh": ("pcocc.cli.access:ssh", "Connect to a VM with ssh"),
    "scp": ("pcocc.cli.access:scp", "Copy files to and from VMs with scp"),
    "nc": ("pcocc.cli.access:nc", "Connect to a TCP port of a VM"),
    "console": ("pcocc.cli.access:console", "Attach to the serial console of a VM"),
    "reset": ("pcocc.cli.access:reset", "Reset VMs"),
    "monitor-cmd": ("pcocc.cli.access:monitor_cmd", "Send a QMP or HMP command to VMs"),
    "exec": ("pcocc.cli.access:exec_", "Run a command in VMs through their guest agents"),
    "ckpt": ("pcocc.cli.ckpt:ckpt", "Checkpoint the VMs of a cluster (restore: alloc -r)"),
    "save": ("pcocc.cli.save:save", "Save the disk of a running VM as an image revision"),
    "dump": ("pcocc.cli.vmview:dump", "Write the guest memory of a VM to an ELF file"),
    "display": ("pcocc.cli.vmview:display", "Print or open the remote display of a VM"),
    "run": ("pcocc.cli.containers:run", "Run container images on the nodes of an allocation"),
    "pod": ("pcocc.cli.containers:pod", "List, inspect, enter and collect container pods"),
    "image": ("pcocc.cli.image:image", "List and manage VM and container images"),
    "trust": ("pcocc.cli.trust:trust", "Trust, list and forget image signing keys"),
    "template": ("pcocc.cli.template:template", "List and show VM templates"),
    "admin": ("pcocc.cli.admin:admin", "Site setup: etcd users and auth, configuration checks"),
    "help": ("pcocc.cli.help:help_", "Show the manual page of a command"),
    "internal": ("pcocc.cli.internal:internal", "Commands run by pcocc itself on the nodes"),
}
#: commands that ``--help`` does not list
HIDDEN = frozenset({"internal"})

#: the commands of ``pcocc pod`` imported on first use (its other commands are eager)
POD_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "export": ("pcocc.cli.pod_export:export",
               "Save the changes of a stopped pod's app as a new image"),
}

#: the subgroups and commands of ``pcocc image`` imported on first use (its other commands
#: are eager)
IMAGE_SUBGROUPS: dict[str, tuple[str, str]] = {
    "cache": ("pcocc.cli.image_cache:cache", "List and clean the container image cache"),
    "cat-manifest": ("pcocc.cli.image_files:cat_manifest",
                     "Print the manifest of an image as JSON"),
    "extract": ("pcocc.cli.image_files:extract",
                "Write the top layer of a container image to a directory"),
    "render": ("pcocc.cli.image_files:render",
               "Write the root filesystem of a container image to a directory"),
    "fetch": ("pcocc.cli.image_fetch:fetch", "Fetch and verify a signed image (https, name)"),
}
