"""The options of OpenSSH's ssh and scp (OpenSSH 9.2, ssh(1), scp(1)), for
:func:`pcocc.optsplit.split_args`: ``pcocc ssh -L 8080:localhost:80 vm0`` and
``pcocc scp -r dir vm0:`` pass them on to the tool as argv words.

pcocc's own options come first: ``-j``/``-J`` select the cluster, so ssh's ``-J``
(ProxyJump) is ``-o ProxyJump=...`` through pcocc; ``pcocc ssh -p PORT`` is the VM's port (as
in pcocc 0.7), so ssh's ``-p`` is never needed (the ssh_config gives the forward's port).
"""

from __future__ import annotations

from pcocc.optsplit import OptionTable

SSH_OPTIONS = OptionTable.of(
    "ssh",
    flags=[f"-{c}" for c in "46AaCfGgKkMNnqsTtVvXxYy"],
    values=[f"-{c}" for c in "BbcDEeFIiJLlmOopQRSWw"],
)

SCP_OPTIONS = OptionTable.of(
    "scp",
    flags=[f"-{c}" for c in "346ABCOpqRrsTv"],
    values=[f"-{c}" for c in "cDFiJloPSX"],
)
