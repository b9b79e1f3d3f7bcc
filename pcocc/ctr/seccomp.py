"""The default seccomp profile: allow everything but a deny list of host-administration calls.

The list keeps what a rootless HPC application needs (ptrace for debuggers, perf counters,
personality) and refuses what only changes the host or escapes the container: kernel modules,
kexec, reboot, swap, clocks, keyrings, BPF, mounts and new namespaces, handle-based opens.
``--insecure-options=seccomp`` drops the profile.
"""

from __future__ import annotations

from typing import Any

#: System calls refused with EPERM inside a container.
DENIED_SYSCALLS: tuple[str, ...] = (
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "pivot_root",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "vhangup",
)

ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64")

#: errno returned by denied calls (EPERM), so that programs see "Operation not permitted".
EPERM = 1


def default_profile() -> dict[str, Any]:
    """The ``linux.seccomp`` section of an OCI runtime spec."""
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES),
        "syscalls": [
            {
                "names": list(DENIED_SYSCALLS),
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
            }
        ],
    }
