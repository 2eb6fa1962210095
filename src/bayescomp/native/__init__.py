"""Kernels compiled on this machine at first use: C sources shipped with the package, built with the system's C
compiler into a cache directory and loaded with :mod:`ctypes` (no Python extension API, so no build step at
install time and no headers beyond the C library's).

Why compile at all: a Bayesian training step draws a standard normal number for every pre-activation, and
PyTorch's CPU generator (Mersenne Twister, one thread) takes ~3.5 ns a number on this project's machine, a fifth
of a LeNet-5 step. The kernel in ``normal.c`` (Philox4x32-10 and Box-Muller, vectorised) takes ~1.1 ns.

The build is ``cc -O3 -march=native -ffast-math`` (the vector math functions come from glibc's libmvec), so the
library is specific to this CPU; the cache key covers the source, the compiler, its flags and the CPU's feature
flags. ``-ffast-math`` is given to the compile step only: linked with it, GCC would add start-up code that sets
flush-to-zero for the whole process. A library that does not build, load, or reproduce Philox's published
test vector is not used: :func:`library` returns ``None`` and :func:`unavailable_reason` says why; callers fall
back to PyTorch. ``BAYESCOMP_NATIVE=0`` turns the kernels off; ``BAYESCOMP_CACHE_DIR`` moves the cache
(default ``$XDG_CACHE_HOME/bayescomp`` or ``~/.cache/bayescomp``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("normal.c")
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-fPIC", "-std=c11")
LINK_LIBRARIES = (("-lmvec", "-lm"), ("-lm",))  # libmvec where glibc has it, else scalar math
# Philox4x32-10 known-answer vector (Salmon et al. 2011, Random123's kat_vectors): counter 0, key 0
PHILOX_ZERO_ANSWER = (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$BAYESCOMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/bayescomp``, else
    ``~/.cache/bayescomp`` (each with a ``native`` subfolder)."""
    root = os.environ.get("BAYESCOMP_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "bayescomp") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "bayescomp")
    return Path(root) / "native"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _build_key(compiler: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), version.encode(), " ".join(COMPILE_FLAGS).encode(),
                 platform.machine().encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def _compile(compiler: str, target: Path) -> None:
    """Compile SOURCE into ``target`` (written under a temporary name, then renamed: concurrent processes never see
    a half-written library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        obj, lib = Path(work) / "normal.o", Path(work) / target.name
        result = subprocess.run([compiler, *COMPILE_FLAGS, "-c", str(SOURCE), "-o", str(obj)], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} could not compile {SOURCE.name}: {result.stderr.strip()[-500:]}")
        errors = []
        for libraries in LINK_LIBRARIES:
            linked = subprocess.run([compiler, "-shared", str(obj), "-o", str(lib), *libraries], capture_output=True,
                                    text=True, timeout=300)
            if linked.returncode == 0:
                break
            errors.append(linked.stderr.strip()[-300:])
        else:
            raise RuntimeError(f"{compiler} could not link {SOURCE.name}: {' | '.join(errors)}")
        os.replace(lib, target)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.bc_normal_fill.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64]
    lib.bc_normal_fill_at.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]
    lib.bc_normal_fill_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64]
    lib.bc_normal_fill.restype = lib.bc_normal_fill_at.restype = lib.bc_normal_fill_bf16.restype = None
    lib.bc_philox4x32_10.argtypes = [ctypes.POINTER(ctypes.c_uint32)] * 3
    lib.bc_philox4x32_10.restype = None
    counter, key, out = (ctypes.c_uint32 * 4)(), (ctypes.c_uint32 * 2)(), (ctypes.c_uint32 * 4)()
    lib.bc_philox4x32_10(counter, key, out)
    if tuple(out) != PHILOX_ZERO_ANSWER:
        raise RuntimeError(f"the compiled Philox4x32-10 gives {[hex(v) for v in out]} for counter 0, key 0, not the "
                           "published test vector")
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call (a few seconds) and cached; ``None`` when they cannot be used
    (see :func:`unavailable_reason`). Thread-safe; the outcome is remembered for the process."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, reason = None, None
        if os.environ.get("BAYESCOMP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            reason = "turned off by BAYESCOMP_NATIVE"
        elif (compiler := _compiler()) is None:
            reason = "no C compiler (cc, gcc or $CC) on PATH"
        else:
            try:
                target = cache_dir() / f"bayescomp_native_{_build_key(compiler)}.so"
                if not target.exists():
                    _compile(compiler, target)
                lib = _load(target)
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                reason = str(error)
        _state["lib"], _state["reason"] = lib, reason
        return lib


def unavailable_reason() -> str | None:
    """Why :func:`library` returned ``None`` (``None`` when it is available or has not been asked yet)."""
    return _state.get("reason")  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded library and its outcome (the next :func:`library` call looks again); for tests."""
    with _lock:
        _state.clear()
