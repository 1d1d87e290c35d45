"""Where and with what a benchmark ran: device name and slug, library versions, git commit, date."""

import datetime
import os
import platform
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def slugify(text):
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "unknown"


@lru_cache(maxsize=1)
def _first_cpu_fields():
    """/proc/cpuinfo's fields of the first processor ({} where there is none)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model():
    return _first_cpu_fields().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_family():
    """'family 26 model 2' from /proc/cpuinfo, or None: a virtual machine's model name ('AMD EPYC') alone does
    not tell CPU generations apart, and their timings differ by up to 2x."""
    fields = _first_cpu_fields()
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']} model {fields.get('model', '?')}"


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    family = cpu_family()
    return f"CPU {cpu_model()} ({family + ', ' if family else ''}{torch.get_num_threads()} threads)"


def device_slug(device):
    """The results folder's name. A CPU model name without a model number ('AMD EPYC', as virtual machines say)
    gets the CPU family and model, so a Zen 2 and a Zen 5 do not write into one folder."""
    device = torch.device(device)
    if device.type == "cuda":
        return slugify(torch.cuda.get_device_name(device))
    model = cpu_model()
    family = cpu_family()
    if family and not re.search(r"\d", model):
        model = f"{model} {family}"
    return "cpu-" + slugify(model)


def _git(*args):
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_commit():
    """Short commit hash, '+dirty' when tracked files differ from it; 'uncommitted' before any commit.
    SEQOPS_COMMIT names it where the tree is a copy without .git (the GPU machine: .ci/gpu-session)."""
    if os.environ.get("SEQOPS_COMMIT"):
        return os.environ["SEQOPS_COMMIT"]
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return "uncommitted"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def seqops_build():
    try:
        import seqops

        return seqops.build_summary()
    except Exception as err:  # not built, being rebuilt, or built against another torch
        return f"unavailable: {type(err).__name__}"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def load_average():
    """The 1-minute load average when the run starts: CPU timings taken on a busy machine are noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def tf32_allowed(device):
    """On CUDA, whether fp32 GEMMs or cuDNN may round to TF32 (the runner turns both off: fp32 rows like for
    like); None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def cudnn_version(device):
    """cuDNN's version (92400 = 9.24.0) on CUDA, where torch.nn's RNNs and SDPA's cuDNN backend run it."""
    if torch.device(device).type != "cuda":
        return None
    return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None


@lru_cache(maxsize=4)
def gpu_driver(device):
    """The NVIDIA driver's version from nvidia-smi (torch does not expose it), or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = out.stdout.strip() if out.returncode == 0 else ""
    return version or None


def environment(device):
    """The fields stamped on every result row."""
    device = torch.device(device)
    return {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn_version(device),
        "gpu_driver": gpu_driver(device),
        "tf32": tf32_allowed(device),
        "seqops": seqops_build(),
        "commit": git_commit(),
        "date": utc_now(),
        "load_avg": load_average(),
    }
