"""QEMU virtual machines: command line, accelerator choice, QMP, guest agent, seed, lifetime."""

from pcocc.vm.machine import Machine, VmBootError
from pcocc.vm.qemu import Drive, VmSpec, build_argv
from pcocc.vm.seed import HostKey, SeedSpec

__all__ = ["Machine", "VmBootError", "VmSpec", "Drive", "build_argv", "SeedSpec", "HostKey"]
