"""Device footprint: what a scoring-only client installs and holds in memory, against a flwr + torch stack.

1. Fresh virtual environments in a temporary directory:

   * ``empty``: ``python -m venv`` alone (pip, setuptools), the baseline every venv carries;
   * ``client``: ``pip install ./client_sdk`` (no extras), checked to contain no torch;
   * ``flwr+torch``: ``pip install flwr torch==<pinned>`` (skipped with ``--quick``);

   with their size on disk (``du``) and the ratio, also net of the empty baseline.
2. Peak RSS of a scoring-only process running in the ``client`` venv: load the ONNX SLM and compute
   the learnability features of N candidates (what a device does every round), sampled with psutil
   from outside every 10 ms and read from the process's own high-water mark (``VmHWM``). For
   comparison, the same candidates' log-probs scored with torch in the development environment.

Every pip run is bounded by ``--pip-timeout-s``; a run that exceeds it is reported as such.

    python benchmarks/bench_footprint.py [--quick] [--candidates 256] [--pip-timeout-s 900]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_footprint"


def du_bytes(path: Path) -> dict[str, int]:
    """Disk usage (allocated blocks) and apparent size of a directory tree, as ``du`` reports them."""
    disk = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    apparent = subprocess.run(["du", "-s", "-b", str(path)], capture_output=True, text=True, check=True)
    return {"disk_bytes": int(disk.stdout.split()[0]), "apparent_bytes": int(apparent.stdout.split()[0])}


def make_venv(path: Path, packages: list[str], timeout_s: float, cwd: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    result: dict = {"path": str(path), "packages_requested": packages}
    if packages:
        cmd = [str(path / "bin" / "python"), "-m", "pip", "install", "--no-input", "--progress-bar", "off", *packages]
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            result.update(status="timed out", install_s=time.perf_counter() - started)
            return result
        if proc.returncode != 0:
            result.update(
                status="pip failed",
                install_s=time.perf_counter() - started,
                pip_tail=(proc.stdout + proc.stderr)[-3000:],
            )
            return result
    result["install_s"] = time.perf_counter() - started
    listing = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    result.update(
        status="ok", installed=installed, n_packages=len(installed), **du_bytes(path), largest_mib=largest_items(path)
    )
    return result


def largest_items(venv: Path, top: int = 8) -> dict[str, float]:
    """The biggest top-level entries of the venv's site-packages, in MiB on disk."""
    site = next(venv.glob("lib/python*/site-packages"), None)
    if site is None:
        return {}
    sizes = {}
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        sizes[entry.name] = du_bytes(entry)["disk_bytes"] if entry.is_dir() else entry.stat().st_size
    return {k: round(v / 2**20, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]}


def peak_rss(cmd: list[str], cwd: Path, timeout_s: float, interval_s: float = 0.01) -> dict:
    """Run ``cmd``; sample its RSS (children included) with psutil until it exits."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            break
        if time.perf_counter() - started > timeout_s:
            proc.kill()
            return {"status": "timed out"}
        time.sleep(interval_s)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"status": f"exit {proc.returncode}", "stderr_tail": err[-2000:]}
    report = json.loads(out.strip().splitlines()[-1])
    return {"status": "ok", "psutil_peak_rss_mib": peak / 2**20, "wall_s": time.perf_counter() - started, **report}


def mib(n: float) -> float:
    return n / 2**20


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=256, help="candidates scored by the scoring-only process")
    p.add_argument("--preset", default="slm-small", help="tiny SLM preset the scoring process loads")
    p.add_argument(
        "--torch-spec",
        default=None,
        help="torch requirement of the flwr venv (default: the version pinned by the train extra)",
    )
    p.add_argument("--pip-timeout-s", type=float, default=900.0, help="bound on each pip install")
    p.add_argument(
        "--workdir", type=Path, default=None, help="where to create the venvs (default: a temp dir, removed)"
    )
    p.add_argument(
        "--no-flwr", dest="flwr", action="store_false", help="skip the flwr + torch venv (implied by --quick)"
    )
    args = p.parse_args()
    if args.quick:
        args.flwr = False
    torch_spec = args.torch_spec or pinned_torch()

    paths = C.world()
    model_dir = paths[args.preset]
    public = paths["data"] / "public.jsonl"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lada-bench-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    venvs: dict[str, dict] = {}
    rss: dict[str, dict] = {}
    try:
        plan = [("empty", []), ("client", ["./client_sdk"])]
        if args.flwr:
            plan.append(("flwr+torch", ["flwr", torch_spec]))
        for name, packages in plan:
            C.say(f"creating venv {name!r}: pip install {' '.join(packages) or '(nothing)'} ...")
            venvs[name] = make_venv(work / name.replace("+", "_"), packages, args.pip_timeout_s, C.REPO_ROOT)
            v = venvs[name]
            C.say(
                f"  {v['status']}"
                + (
                    f", {mib(v['disk_bytes']):,.0f} MiB, {v['n_packages']} packages, {v['install_s']:.0f}s"
                    if v["status"] == "ok"
                    else ""
                )
            )
        client = venvs["client"]
        if client["status"] == "ok":
            client["torch_installed"] = "torch" in client["installed"]
            if client["torch_installed"]:
                C.say("ERROR: the client-only venv contains torch")
            C.say(f"scoring-only process in the client venv: {args.candidates} candidates, {args.preset} ...")
            child = child_args(model_dir, public, args.candidates)
            rss["client venv, onnx features"] = peak_rss(
                [str(Path(client["path"]) / "bin" / "python"), *child, "--mode", "onnx-features"], C.REPO_ROOT, 900
            )
            rss["client venv, onnx log-probs"] = peak_rss(
                [str(Path(client["path"]) / "bin" / "python"), *child, "--mode", "onnx-logprobs"], C.REPO_ROOT, 600
            )
        rss["dev env, torch log-probs"] = peak_rss(
            [sys.executable, *child_args(model_dir, public, args.candidates), "--mode", "torch-logprobs"],
            C.REPO_ROOT,
            600,
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    base = venvs["empty"].get("disk_bytes", 0)
    rows = []
    for name, v in venvs.items():
        if v["status"] != "ok":
            rows.append([name, v["status"], "", "", "", ""])
            continue
        rows.append(
            [
                name,
                mib(v["disk_bytes"]),
                mib(v["apparent_bytes"]),
                mib(v["disk_bytes"] - base),
                v["n_packages"],
                "torch " + v["installed"]["torch"] if "torch" in v["installed"] else "no torch",
            ]
        )
    C.say()
    C.say(C.table(["venv", "disk MiB", "apparent MiB", "net of empty MiB", "packages", "torch"], rows))
    ratio = {}
    if venvs.get("flwr+torch", {}).get("status") == "ok" and client["status"] == "ok":
        ratio = {
            "disk": venvs["flwr+torch"]["disk_bytes"] / client["disk_bytes"],
            "net_of_empty": (venvs["flwr+torch"]["disk_bytes"] - base) / (client["disk_bytes"] - base),
        }
        C.say(
            f"\nflwr+torch / client: {ratio['disk']:.1f}x on disk, {ratio['net_of_empty']:.1f}x net of the empty venv"
        )
    for name, v in venvs.items():
        if v.get("largest_mib"):
            C.say(f"largest in {name}: " + ", ".join(f"{k} {m:.0f}" for k, m in v["largest_mib"].items()) + " (MiB)")
    C.say()
    C.say(
        C.table(
            ["process", "psutil peak RSS MiB", "VmHWM MiB", "load s", "score s", "torch imported"],
            [
                [
                    k,
                    r.get("psutil_peak_rss_mib", r["status"]),
                    r.get("vm_hwm_mib", ""),
                    r.get("load_s", ""),
                    r.get("score_s", ""),
                    r.get("torch_imported", ""),
                ]
                for k, r in rss.items()
            ],
        )
    )
    for v in venvs.values():
        v.pop("path", None)
    path = C.write_results(
        NAME,
        {
            "settings": {
                "candidates": args.candidates,
                "preset": args.preset,
                "quick": args.quick,
                "flwr": args.flwr,
                "torch_spec": torch_spec,
                "pip_timeout_s": args.pip_timeout_s,
            },
            "venvs": venvs,
            "ratio_flwr_torch_over_client": ratio,
            "scoring_process": rss,
        },
        args.out,
    )
    C.say(f"\nresults: {path}")
    ok = client["status"] == "ok" and not client.get("torch_installed", True)
    return 0 if ok else 1


def child_args(model_dir: Path, public: Path, n: int) -> list[str]:
    return [
        str(C.BENCH_DIR / "_score_child.py"),
        "--model-dir",
        str(model_dir),
        "--public",
        str(public),
        "--candidates",
        str(n),
    ]


def pinned_torch() -> str:
    """The torch requirement of lada-client's ``train`` extra (what a training device installs)."""
    text = (C.REPO_ROOT / "client_sdk" / "pyproject.toml").read_text()
    found = re.search(r'"(torch==[^"]+)"', text)
    return found.group(1) if found else "torch"


if __name__ == "__main__":
    sys.exit(main())
