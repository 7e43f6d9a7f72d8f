"""llama.cpp's reference tools (``llama-imatrix``, ``llama-perplexity``) built from the pinned release's tree.

One build recipe: packaging/build_llama_tools.sh (portable flags, cached under
``${QUANT_STUDIO_CACHE:-~/.cache/quant-studio}/tools/<sha1 of version + flags>/``, built in a temporary directory
and renamed, so two processes racing both succeed). CI's bootstrap runs it once; here it is run on first use
(~10 minutes on 2 cores) when the cache lacks the tools. A missing tree or a failed build is an error, never a skip.
"""
from __future__ import annotations

import os
import subprocess
import threading

from .tree import LLAMA_CPP_PYTHON_VERSION, llama_cpp_tree

TOOLS = ("llama-imatrix", "llama-perplexity")
_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "packaging", "build_llama_tools.sh")
_lock = threading.Lock()


def _env() -> dict:
    return dict(os.environ, LLAMA_CPP_VERSION=LLAMA_CPP_PYTHON_VERSION, LLAMA_CPP_TREE=llama_cpp_tree())


def tools_dir() -> str:
    """The cache directory of this version and these flags (whether or not it is built yet)."""
    out = subprocess.run(["bash", _SCRIPT, "--dir"], env=_env(), capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def llama_tool(name: str) -> str:
    """Path of ``llama-imatrix`` or ``llama-perplexity``, building both first if needed."""
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
    with _lock:
        d = tools_dir()
        path = os.path.join(d, name)
        if not os.access(path, os.X_OK):
            p = subprocess.run(["bash", _SCRIPT], env=_env(), capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"building llama.cpp's tools failed ({p.returncode}):\n{p.stderr[-4000:]}")
            d = p.stdout.strip().splitlines()[-1]
            path = os.path.join(d, name)
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{name} is missing from {d} after the build")
        return path


def run_tool(name: str, *args: str, timeout: float = 600) -> str:
    """Run a tool (2 threads); its combined output, RuntimeError with the tail when it fails."""
    p = subprocess.run([llama_tool(name), *args], capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"{name} failed ({p.returncode}):\n{out[-4000:]}")
    return out
