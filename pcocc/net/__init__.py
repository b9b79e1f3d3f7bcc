"""Networks of VMs: which NICs a VM gets, and on which host address its forwards listen."""
