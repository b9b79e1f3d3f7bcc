"""QEMU virtual machines: command line, accelerator choice, QMP, guest agent, seed, lifetime."""

from pcocc.vm.machine import Machine, VmBootError
from pcocc.vm.qemu import Drive, VmSpec, build_argv
from pcocc.vm.seed import HostKey, SeedSpec

__all__ = ["Drive", "HostKey", "Machine", "SeedSpec", "VmBootError", "VmSpec", "build_argv"]
