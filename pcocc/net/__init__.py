"""Networks of VMs: which NICs a VM gets, and on which host address its forwards listen.

- :mod:`pcocc.net.resolve`: resource set networks -> definitions -> a plan, one builder per
  network type (``BUILDERS``)
- :mod:`pcocc.net.user`: QEMU user-mode NICs and their port forwards

The node's address that the other nodes reach is :mod:`pcocc.netaddr`, outside this package:
:mod:`pcocc.kv` needs it too, and this package needs :mod:`pcocc.kv`.
"""
