"""Choose the QEMU accelerator: ``auto``, ``kvm`` or ``tcg``.

A working ``/dev/kvm`` cannot be told from its presence: on some hosts it opens and creates a
VM, but the guest kernel then hangs in early boot (and ``-cpu host`` aborts on an MSR). So
``auto`` boots a real guest under KVM and requires it to finish within a short timeout: a
kernel of the host (``/boot/vmlinuz-*``) started without a root file system must reach its
"VFS: Unable to mount root" panic and, with ``-no-reboot``, make QEMU exit. Without a kernel
to boot, a one-sector guest that writes to the serial port is used (a weaker check).
The result is cached per boot of the host (keyed by ``/proc/sys/kernel/random/boot_id``), so
only the first VM after a reboot pays for the probe. A failing probe falls back to TCG with
a one-line warning.

``PCOCC_ACCEL`` (auto|kvm|tcg) in the environment overrides the setting (tests use it).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pcocc import fsutil, proc
from pcocc.errors import PcoccError, ToolError, UsageError

log = logging.getLogger(__name__)

ACCEL_ENV = "PCOCC_ACCEL"
SETTINGS = ("auto", "kvm", "tcg")
KVM_DEVICE = Path("/dev/kvm")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ProbeResult:
    is_usable: bool
    reason: str  # why KVM is not usable, or how it was checked


Probe = Callable[[], ProbeResult]


def resolve_accel(
    setting: str | None,
    *,
    probe: Probe | None = None,
    cache_path: Path | None = None,
    warn: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    kvm_device: Path = KVM_DEVICE,
    boot_id: str | None = None,
) -> str:
    """Return ``"kvm"`` or ``"tcg"`` for a setting of ``auto``, ``kvm``, ``tcg`` (or None=auto).

    :param probe: checks that a guest really runs under KVM (default: :func:`probe_kvm`)
    :param cache_path: where the probe result of this boot of the host is kept
    :param warn: receives the one-line warning when ``auto`` falls back to TCG
    :raise UsageError: unknown setting (in the template or in ``PCOCC_ACCEL``)
    :raise PcoccError: ``kvm`` was asked for and ``/dev/kvm`` cannot be opened
    """
    environ = os.environ if env is None else env
    source = "accel setting"
    if environ.get(ACCEL_ENV):
        setting, source = environ[ACCEL_ENV], f"environment variable {ACCEL_ENV}"
    setting = (setting or "auto").strip().lower()
    if setting not in SETTINGS:
        raise UsageError(
            f"{source}: unknown accelerator '{setting}'", hint="use auto, kvm or tcg"
        )
    if setting == "tcg":
        return "tcg"
    kvm_error = _kvm_device_error(kvm_device)
    if setting == "kvm":
        if kvm_error:
            raise PcoccError(
                f"KVM was requested but {kvm_error}",
                hint="use 'accel: auto' or 'accel: tcg', or ask an admin to enable KVM",
            )
        return "kvm"
    warn = warn or (lambda msg: log.warning("%s", msg))
    if kvm_error:
        log.info("%s: using TCG", kvm_error)
        return "tcg"
    result = cached_probe(probe or probe_kvm, cache_path, boot_id=boot_id)
    if result.is_usable:
        return "kvm"
    warn(f"KVM is not usable ({result.reason}); falling back to TCG (slow emulation)")
    return "tcg"


def _kvm_device_error(device: Path) -> str | None:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"{device} cannot be opened ({err.strerror})"
    os.close(fd)
    return None


def host_boot_id() -> str:
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return "unknown"


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pcocc" / "kvm-probe.json"


def cached_probe(
    probe: Probe, cache_path: Path | None, *, boot_id: str | None = None
) -> ProbeResult:
    """Run ``probe`` once per boot of the host; later calls read the cached answer.

    The probe and the cache write happen under a lock next to the cache file, so that VMs
    starting at the same moment run one probe: the others wait, then read its answer.
    """
    path = cache_path or default_cache_path()
    boot = boot_id or host_boot_id()
    cached = _read_cached(path, boot)
    if cached is not None:
        return cached
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = fsutil.locked(
            path.with_name(path.name + ".lock"),
            wait_s=PROBE_TIMEOUT_S * 6,
            what="the KVM probe lock",
        )
        with lock:
            cached = _read_cached(path, boot)  # the holder before us may have probed
            if cached is not None:
                return cached
            return _probe_and_cache(probe, path, boot)
    except (OSError, PcoccError) as err:
        # no place for the cache or its lock (or a stuck holder): probe without them
        log.debug("cannot lock the KVM probe cache %s: %s", path, err)
        return _probe_and_cache(probe, path, boot)


def _read_cached(path: Path, boot: str) -> ProbeResult | None:
    try:
        data = json.loads(path.read_text())
        if data.get("boot_id") == boot:
            return ProbeResult(bool(data["is_usable"]), str(data["reason"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _probe_and_cache(probe: Probe, path: Path, boot: str) -> ProbeResult:
    result = probe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_atomic(path, json.dumps({"boot_id": boot, **asdict(result)}) + "\n")
    except (OSError, PcoccError) as err:
        log.debug("cannot cache the KVM probe result in %s: %s", path, err)
    return result


def find_probe_kernel() -> Path | None:
    """A readable kernel of the host to boot under KVM, if there is one."""
    for candidate in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        if os.access(candidate, os.R_OK):
            return Path(candidate)
    return None


def probe_kvm(
    *,
    qemu_bin: str = "qemu-system-x86_64",
    cpu_model: str = "host",
    kernel: Path | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> ProbeResult:
    """Boot a real guest under KVM; usable only if it gets where it must within the timeout."""
    kernel = kernel or find_probe_kernel()
    with tempfile.TemporaryDirectory(prefix="pcocc-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [qemu_bin, "-accel", "kvm", "-cpu", cpu_model, "-m", "128", "-display", "none",
                "-nodefaults", "-no-user-config", "-no-reboot",
                "-serial", "file:" + os.fspath(serial).replace(",", ",,")]
        if kernel is not None:
            argv += ["-kernel", os.fspath(kernel), "-append", "console=ttyS0 panic=-1"]
            expected, what = "Kernel panic", f"kernel {kernel}"
        else:
            image = Path(tmp) / "boot.img"
            image.write_bytes(_BOOT_SECTOR)
            argv += ["-drive", "file=" + os.fspath(image).replace(",", ",,")
                     + ",format=raw,if=ide"]
            expected, what = _BOOT_SECTOR_MARK, "a boot sector"
        started = time.monotonic()
        try:
            res = proc.run(argv, check=False, timeout_s=timeout_s, what="KVM probe guest")
        except ToolError:
            text = _read(serial)
            if kernel is None and expected in text:
                return ProbeResult(True, f"{what} ran under KVM")
            return ProbeResult(False, f"a guest ({what}) did not boot within {timeout_s:g} s")
        text = _read(serial)
        if res.returncode == 0 and expected in text:
            spent = time.monotonic() - started
            return ProbeResult(True, f"{what} booted under KVM in {spent:.1f} s")
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        first = lines[0][:160] if lines else "no message"
        return ProbeResult(False, f"the probe guest's QEMU {proc.ended(res.returncode)}: "
                                  f"{first}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


_BOOT_SECTOR_MARK = "K"
#: mov dx,0x3f8; mov al,'K'; out dx,al; cli; hlt; jmp $-1 (then -no-reboot never fires:
#: the caller's timeout ends it, and the mark in the serial log decides).
_BOOT_SECTOR = (
    bytes([0xBA, 0xF8, 0x03, 0xB0, ord(_BOOT_SECTOR_MARK), 0xEE, 0xFA, 0xF4, 0xEB, 0xFD])
    .ljust(510, b"\0") + b"\x55\xaa"
)
