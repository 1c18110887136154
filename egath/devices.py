"""Which torch device a job runs on, and which GPU it may use.

Snakemake's `--resources gpu=N` only limits how many GPU jobs run at once; it does not say
which GPU each gets. So a local job claims one itself: it takes an exclusive `flock` on
`gpu{N}.lock` in `$EGATH_GPU_LOCK_DIR` (default /tmp/egath-gpu-locks), keeps the file open for
the rest of its life (the kernel frees the lock when the process dies, however it dies) and
sets CUDA_VISIBLE_DEVICES to that GPU before CUDA is initialised. When every GPU is held, the
job waits for one to be freed rather than fall back to a CPU many times slower.

`gpu_slots` jobs may share one GPU (default 1): small jobs that leave a GPU mostly idle (bound
by kernel launches) then run side by side. Each GPU has that many lock files, slot 0 being
`gpu{N}.lock` and slot s `gpu{N}.slot{s}.lock`; a job takes a free slot 0 on any GPU before a
slot 1, so jobs spread over the GPUs before they share one.

Under SLURM the scheduler has already set CUDA_VISIBLE_DEVICES; it is left as it is.
`EGATH_FAKE_GPUS=N` pretends there are N GPUs (0..N-1), for tests.
"""
from __future__ import annotations

import fcntl
import logging
import numbers
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_held: tuple[str, int] | None = None  # (device id, lock file descriptor), open for the process's life


def list_gpus() -> list[str]:
    """The GPU ids this process may use, found without initialising CUDA."""
    fake = os.environ.get("EGATH_FAKE_GPUS")
    if fake is not None:
        return [str(i) for i in range(int(fake))]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # the user narrowed the choice
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    # nvidia-smi numbers GPUs by PCI bus; make CUDA number them the same way
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return out.stdout.split() if out.returncode == 0 else []


def _lock_name(device: str, slot: int) -> str:
    return f"gpu{device}.lock" if slot == 0 else f"gpu{device}.slot{slot}.lock"


def claim_gpu(devices: list[str] | None = None, lock_dir: str | Path | None = None,
              poll_s: float = 2.0, gpu_slots: int = 1) -> str | None:
    """Hold a slot of a GPU for the rest of this process and make it the only GPU CUDA sees.

    `gpu_slots`: how many jobs may share one GPU. Waits while every slot is held. Returns
    the GPU's id, or None when there is no GPU.
    """
    global _held
    if isinstance(gpu_slots, bool) or not isinstance(gpu_slots, numbers.Integral) or gpu_slots < 1:
        raise ValueError(f"gpu_slots must be an integer >= 1, got {gpu_slots!r}")
    if _held is not None:
        return _held[0]
    devices = list_gpus() if devices is None else devices
    if not devices:
        return None
    lock_dir = Path(lock_dir or os.environ.get("EGATH_GPU_LOCK_DIR", "/tmp/egath-gpu-locks"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_dir.chmod(0o1777)  # shared by every user's jobs, like /tmp
    except PermissionError:
        pass
    waiting = False
    while True:
        for slot in range(gpu_slots):
            for device in devices:
                path = lock_dir / _lock_name(device, slot)
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # read-only: flock needs no more
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                _held = (device, fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = device
                log.info("claimed GPU %s, slot %d of %d (lock %s): CUDA_VISIBLE_DEVICES=%s",
                         device, slot + 1, gpu_slots, path, device)
                return device
        if not waiting:
            log.info("all %d GPUs (%s) are held by other jobs (%d per GPU): waiting for one",
                     len(devices), ",".join(devices), gpu_slots)
            waiting = True
        time.sleep(poll_s)


def select_device(requested: str = "auto", gpu_slots: int = 1) -> str:
    """`auto`: a GPU when there is one, else the CPU (and say so); `cpu` or `cuda` to force.

    `gpu_slots`: how many jobs may share one GPU (claim_gpu); SLURM's assignment is kept as is.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if os.environ.get("SLURM_JOB_ID"):
        log.info("SLURM job %s: CUDA_VISIBLE_DEVICES=%s (assigned by the scheduler)",
                 os.environ["SLURM_JOB_ID"], os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    elif claim_gpu(gpu_slots=gpu_slots) is None:
        if requested == "cuda":
            raise RuntimeError("device: cuda was asked for, but there is no GPU")
        log.info("no GPU found: running on the CPU")
        return "cpu"

    import torch  # only now: CUDA reads CUDA_VISIBLE_DEVICES once, when it is initialised

    if torch.cuda.is_available():
        log.info("running on %s", torch.cuda.get_device_name())
        return "cuda"
    if requested == "cuda":
        raise RuntimeError("device: cuda was asked for, but torch sees no GPU")
    log.info("torch sees no GPU: running on the CPU")
    return "cpu"
