"""What every script shares below the experiment: user-facing errors, device and precision, checkpoint I/O.

Nothing here knows about configs, data or models, so config.py, data.py, train.py, evaluate.py, bench.py
and report.py all import from it and none of them has to import the trainer.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import warnings
from typing import Callable

import torch

CKPT_FORMAT = "alexnet-lab/1"


# ---------------------------------------------------------------------------------------------
# User errors: one line on stderr and a non-zero exit, never a traceback

class UserError(Exception):
    """A mistake the user can fix; the message says how. Scripts exit with `exit_status`."""
    exit_status = 2


class ConfigError(UserError, ValueError):
    """A user mistake in a config file or override."""


class DataError(UserError, RuntimeError):
    """A dataset that cannot be found, downloaded or read."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated, foreign or incompatible."""


class OutputError(UserError, OSError):
    """An output (run folder, checkpoint, cache, report) that cannot be written: the path and why."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite, or the network collapsed; checkpoints written before it are intact."""
    exit_status = 3


def cli(body: Callable[[], int]) -> int:
    """Run a script's body; a UserError becomes `error: <message>` on stderr and its exit status."""
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status


def mix_seed(seed: int, *parts: int) -> int:
    """One integer seed from a run seed and counters (epoch, item, rank): seed * 1_000_003 + ... per part."""
    for p in parts:
        seed = seed * 1_000_003 + p
    return seed


# ---------------------------------------------------------------------------------------------
# Device, distributed, precision

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA GPU is visible; use device=cpu or device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps was requested but is not available; use device=cpu or device=auto")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; joins the process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        use_nccl = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), world


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16/AMX; elsewhere bf16 is emulated and far slower than fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def hardware(device: torch.device, world: int) -> str:
    """What a run trained on, kept with every epoch's metrics: speed (and, through bf16, the numbers
    themselves) depends on it, and a run resumed on another machine mixes two."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{world}"
    name = platform.processor() or platform.machine() or "unknown CPU"  # Linux has the full name below
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{name}, {torch.get_num_threads()} threads{f' x{world} processes' if world > 1 else ''}, {bf16}"


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.amp` on this device; None means full fp32."""
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp: fp16 autocast needs a CUDA device; use train.amp=bf16 or off on "
                              f"{device.type}")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(amp: torch.dtype | None) -> str:
    return str(amp or torch.float32).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The one precision context used for training, validation, evaluation and benchmarks."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in glibc's heap (process-wide; Linux only).

    By default glibc serves every activation-sized tensor with a fresh mmap and returns it on free, so
    each training step page-faults and zero-fills ~1 GB anew; measured ~20% of a CPU step here.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def process_uptime() -> float | None:
    """Seconds since this process started (read from /proc; None where there is no /proc)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# Files: atomic writes and checkpoints (plain dicts, loadable with weights_only=True)

def _why(e: BaseException) -> str:
    """A short reason for a failed write. torch.save reports a full disk as a RuntimeError
    ("[enforce fail at inline_container.cc] ... file write failed"), not as an OSError."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if "write failed" in str(e) or "No space" in str(e):
        return "no space left on device"
    text = str(e).strip().splitlines()
    return text[-1][:120] if text else type(e).__name__


def make_dir(path: str) -> str:
    """os.makedirs(path, exist_ok=True), as an OutputError naming the path when it cannot be made."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        what = "is a file" if os.path.isfile(path) else _why(e)
        raise OutputError(f"cannot create folder {path}: {what}; point the option that names it "
                          "(out_dir, run_dir, data.cache_dir, ...) at a writable folder") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"folder {path} is not writable; point the option that names it at a writable folder")
    return path


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` then fsync and rename onto `path`: a crash leaves the old file or the new one, never half.
    A failed write (disk full, permissions) removes its temp file and leaves the old file as it was."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise OutputError(f"cannot write {path}: {_why(e)}; free some space or choose a writable location "
                          "(files written earlier are intact)") from None
    finally:
        try:
            os.remove(tmp)
        except OSError:
            pass


def save_figure(fig, path: str) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically, and close it (also on failure)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def remove_stale_temps(folder: str) -> list[str]:
    """Delete `*.tmpPID` files in `folder` left by atomic_write in processes that are gone (kill -9, a crash)."""
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        head, sep, pid = name.rpartition(".tmp")
        if not (sep and head and pid.isdigit()) or process_alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def save_checkpoint(state: dict, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str) -> dict:
    """Load and sanity-check a checkpoint; every failure is a CheckpointError with a one-line reason."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory; pass RUN_DIR/last.pt or RUN_DIR/best.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; pass RUN_DIR/last.pt or RUN_DIR/best.pt")
    try:
        with warnings.catch_warnings():  # torch warns before it refuses a pickle; the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Weights only load failed" in str(e):  # a pickle of Python objects: refused, nothing was executed
            raise CheckpointError(f"{path} holds pickled Python objects, not plain tensors, and was not loaded "
                                  "(nothing in it ran); use a checkpoint that train.py wrote") from None
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({reason}); "
                              "use another checkpoint, e.g. the run's best.pt or last.pt") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an alexnet-lab checkpoint (no '{CKPT_FORMAT}' format tag)")
    missing = [k for k in ("config", "classes", "stats", "image_size") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is an incomplete alexnet-lab checkpoint (no {', '.join(missing)}); "
                              "use the run's last.pt or best.pt as train.py wrote it")
    return ckpt
