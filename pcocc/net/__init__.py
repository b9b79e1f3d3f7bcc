"""Networks of VMs: which NICs a VM gets, and on which host address its forwards listen.

- :mod:`pcocc.net.address`: the node's address that the other nodes reach
- :mod:`pcocc.net.resolve`: resource set networks -> definitions -> a plan, one builder per
  network type (``BUILDERS``)
- :mod:`pcocc.net.user`: QEMU user-mode NICs and their port forwards
"""
