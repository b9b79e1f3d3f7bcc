"""The names of the files in a VM's run directory (see :mod:`pcocc.vm.machine`); relative,
since QEMU runs in that directory."""

CONSOLE_SOCKET = "console.sock"
CONSOLE_LOG = "console.log"
QMP_SOCKET = "qmp.sock"
AGENT_SOCKET = "qga.sock"
QEMU_LOG = "qemu.log"
OVERLAY = "disk0.qcow2"
SEED = "seed.iso"
