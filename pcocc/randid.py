"""Random identifiers without the import cost of :mod:`uuid` (~2 ms, on the start-up path
of ``pcocc run``)."""

import os


def new_uuid() -> str:
    """A random (version 4) UUID."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
