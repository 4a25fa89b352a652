"""Name the process that holds GPU memory, so a panel says which model, not which PID.

NVML gives the executable path (``/usr/bin/python3``); for Python servers the command line says
more. vLLM, SGLang and TGI are recognised and labelled ``<engine>:<served model>``; anything else
is the executable's base name. Labels are bounded by the caller (top N per GPU, rest "other").
"""

from __future__ import annotations

import os
from pathlib import Path

_PYTHONS = ("python", "python3", "pt_main_thread", "ray::")


def _flag(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def label_from_cmdline(argv: list[str]) -> str | None:
    """``vllm serve Qwen/Qwen3-8B --served-model-name chat`` -> ``vllm:chat``; None if unrecognised."""
    if not argv:
        return None
    joined = " ".join(argv)
    if "vllm" in joined and ("serve" in argv or "vllm.entrypoints" in joined):
        served = _flag(argv, "--served-model-name")
        if served:
            return f"vllm:{served}"
        if "serve" in argv:
            i = argv.index("serve")
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                return f"vllm:{argv[i + 1]}"
        model = _flag(argv, "--model")
        return f"vllm:{model}" if model else "vllm"
    if "sglang" in joined:
        model = _flag(argv, "--served-model-name", "--model-path", "--model")
        return f"sglang:{model}" if model else "sglang"
    if "text-generation" in joined:
        model = _flag(argv, "--model-id")
        return f"tgi:{model}" if model else "tgi"
    return None


def read_cmdline(pid: int, proc: Path = Path("/proc")) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []  # other PID namespace, or gone already
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_label(pid: int, nvml_name: str | None, proc: Path = Path("/proc")) -> str:
    base = os.path.basename(nvml_name) if nvml_name else ""
    if nvml_name and "/" not in nvml_name and base and not base.startswith(_PYTHONS):
        return base  # already a meaningful name
    label = label_from_cmdline(read_cmdline(pid, proc))
    if label:
        return label
    return base or "unknown"
