"""Checks of the packaged application, run by `make package` (packaging/build_package.sh).

    python packaging/check_package.py bundle dist/quant-studio
        the frozen app quantizes the demo model headless (twice, with a fresh kernel cache: the first run
        compiles the kernels into the per-user cache, the second reuses them and writes nothing new),
        `--self-test` opens the studio offscreen, quantizes and saves a screenshot, and no test-only
        package was bundled; prints the cold and warm times and the bundle size.
    python packaging/check_package.py deb dist/quant-studio_VERSION_amd64.deb
        control fields, file list, desktop entry and MIME type; then installs the .deb with dpkg into an
        empty root (dpkg --root) and runs the installed `quant-studio` from there.

Exit status 0 when every check passes; the first failed check ends it with a one-line message.
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
import time

FORBIDDEN = ("llama_cpp", "pytest", "_pytest", "pytestqt", "importlinter", "grimp", "PyInstaller")


def fail(msg: str) -> None:
    print(f"check_package: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    return r, time.perf_counter() - t0


def cache_files(root: str) -> dict[str, float]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def check_bundle(bundle: str) -> None:
    exe = os.path.join(bundle, "quant-studio")
    if not os.access(exe, os.X_OK):
        fail(f"{exe} is missing or not executable")
    internal = os.path.join(bundle, "_internal")
    present = [m for m in FORBIDDEN if os.path.exists(os.path.join(internal, m))]
    if present:
        fail(f"test-only packages in the bundle: {present}")
    if not os.path.isfile(os.path.join(internal, "core", "kernels", "kquants.py")):
        fail("core's kernel modules are not shipped as source files (Numba could not cache them)")
    if not os.path.isfile(os.path.join(internal, "core", "eval", "data", "calibration-v1.txt")):
        fail("the built-in calibration text (core/eval/data/calibration-v1.txt) is not in the bundle")
    work = tempfile.mkdtemp(prefix="qs-bundle-check-")
    env = {"XDG_CACHE_HOME": os.path.join(work, "cache"), "HOME": work, "QT_QPA_PLATFORM": "offscreen"}
    r, _ = run([exe, "--version"], env)
    if r.returncode != 0 or "quant-studio" not in r.stdout:
        fail(f"--version: {r.stderr.strip() or r.stdout.strip()}")
    numba_cache = os.path.join(work, "cache", "quant-studio", "numba")
    shot = os.path.join(work, "self-test.png")
    starts = []
    for i in range(2):                       # the studio's first start compiles kernels, the second reuses them
        r, st = run([exe, "--self-test", "--screenshot", shot], env)
        if r.returncode != 0 or not os.path.getsize(shot):
            fail(f"--self-test (start {i + 1}): {(r.stderr or r.stdout).strip()[-500:]}")
        starts.append(st)
    times = []
    for i in range(2):
        out = os.path.join(work, f"demo{i}")
        r, secs = run([exe, "demo", "--type", "Q4_K", "--output-dir", out, "--json"], env)
        if r.returncode != 0:
            fail(f"headless quantize of the demo (run {i + 1}): {r.stderr.strip()[-500:]}")
        times.append(secs)
        files = cache_files(numba_cache)
        if i == 0:
            if not any(f.endswith(".nbi") for f in files):
                fail(f"no kernel was cached in {numba_cache}")
            first = files
        elif files != first:
            new = sorted(set(files) - set(first)) or [p for p in files if files[p] != first.get(p)]
            fail(f"the second run compiled kernels again ({len(new)} cache files written, e.g. {new[:2]})")
    print(f"bundle: {du(bundle) / 2**20:.0f} MiB; studio --self-test (start, open the demo, quantize to Q8_0, "
          f"screenshot): cold {starts[0]:.1f} s, warm {starts[1]:.1f} s; demo to Q4_K headless: first run "
          f"{times[0]:.1f} s (its kernels compiled into the per-user cache), second run {times[1]:.1f} s "
          f"(cache reused, nothing recompiled)")
    shutil.rmtree(work, ignore_errors=True)


def check_deb(deb: str) -> None:
    r, _ = run(["dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends"])
    fields = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines() if ": " in line)
    if fields.get("Package") != "quant-studio" or fields.get("Architecture") != "amd64" or "libxcb-cursor0" \
            not in fields.get("Depends", ""):
        fail(f"control fields: {fields}")
    r, _ = run(["dpkg-deb", "--contents", deb])
    listing = r.stdout
    for path in ("./opt/quant-studio/quant-studio", "./usr/bin/quant-studio -> /opt/quant-studio/quant-studio",
                 "./usr/share/applications/quant-studio.desktop",
                 "./usr/share/icons/hicolor/scalable/apps/quant-studio.svg",
                 "./usr/share/mime/packages/quant-studio.xml", "./opt/quant-studio/_internal/models/"):
        if path not in listing:
            fail(f"{path} is not in the package")
    root = tempfile.mkdtemp(prefix="qs-deb-root-")
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
    r, _ = run(["dpkg", f"--root={root}", "--force-depends", "--force-script-chrootless", "--log=/dev/null",
                "--no-triggers", "-i", deb])
    if r.returncode != 0:
        fail(f"dpkg -i into an empty root: {r.stderr.strip()[-500:]}")
    r, _ = run(["dpkg", f"--root={root}", "-s", "quant-studio"])
    if "Status: install ok installed" not in r.stdout:
        fail(f"dpkg does not list quant-studio as installed: {r.stdout.strip()}")
    desktop = configparser.ConfigParser(interpolation=None)
    desktop.optionxform = str
    desktop.read(os.path.join(root, "usr/share/applications/quant-studio.desktop"))
    e = desktop["Desktop Entry"]
    if e.get("Type") != "Application" or not e.get("Exec", "").startswith("quant-studio") \
            or "application/x-gguf" not in e.get("MimeType", "") or e.get("Icon") != "quant-studio":
        fail(f"desktop entry: {dict(e)}")
    link = os.readlink(os.path.join(root, "usr/bin/quant-studio"))
    if link != "/opt/quant-studio/quant-studio":
        fail(f"/usr/bin/quant-studio points to {link}")
    exe = os.path.join(root, link.lstrip("/"))
    home = tempfile.mkdtemp(prefix="qs-home-")
    env = {"HOME": home, "XDG_CACHE_HOME": os.path.join(home, ".cache"), "PATH": os.path.dirname(exe) + ":"
           + os.environ.get("PATH", "")}
    r, _ = run([exe, "--version"], env)
    if r.returncode != 0:
        fail(f"the installed quant-studio does not run: {r.stderr.strip()}")
    demo = os.path.join(root, "opt/quant-studio/_internal/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = os.path.join(home, "demo.Q8_0.gguf")
    r, secs = run([exe, "quantize", demo, out, "--type", "Q8_0", "--verify"], env)
    if r.returncode != 0 or "verified: sound" not in r.stdout:
        fail(f"the installed quant-studio cannot quantize the demo: {r.stderr.strip()[-500:]}")
    print(f".deb: {os.path.getsize(deb) / 2**20:.0f} MiB; installed with dpkg into an empty root, "
          f"{e.get('Exec')} runs; demo to Q8_0 with --verify in {secs:.1f} s")
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("bundle", "deb"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    (check_bundle if sys.argv[1] == "bundle" else check_deb)(sys.argv[2])
    print("check_package: ok")
