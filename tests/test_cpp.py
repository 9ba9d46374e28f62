"""Builds the C++ library with CMake, runs the C++ unit tests (ctest), installs the package and
builds a C program (project(app C)) and a C++ program against it with find_package(headkv); both
must greedy-generate the tokens the Python Model generates. The build directory is reused between
runs (build/cpp-tests, or HEADKV_CPP_BUILD), CPU only, Release."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    build = Path(os.environ.get("HEADKV_CPP_BUILD", ROOT / "build" / "cpp-tests"))
    prefix = tmp_path_factory.mktemp("prefix")
    gen = ["-G", "Ninja"] if subprocess.run(["ninja", "--version"], capture_output=True).returncode == 0 else []
    # the same backends as the installed extension: CUDA only where it was built (nvcc on a machine
    # without a GPU would otherwise compile every .cu file again for nothing the tests run)
    from headkv import _core
    cuda = "ON" if _core.cuda_built() else "OFF"
    _run(["cmake", "-S", str(ROOT), "-B", str(build), *gen, "-DHEADKV_BUILD_TESTS=ON",
          "-DCMAKE_BUILD_TYPE=Release", f"-DHEADKV_CUDA={cuda}", "-DHEADKV_NATIVE=OFF"])
    _run(["cmake", "--build", str(build), "-j", "2"], timeout=1800)
    _run(["cmake", "--install", str(build), "--prefix", str(prefix)])
    return build, prefix


def test_ctest_unit_tests(installed):
    build, _ = installed
    r = _run(["ctest", "--test-dir", str(build), "--output-on-failure"], timeout=600)
    assert "tests passed" in r.stdout


def _python_greedy(model, prompt, n):
    model.reset()
    out = []
    model.eval(model.tokenize(prompt))
    for _ in range(n):
        t = int(model.logits().argmax())
        out.append(t)
        model.eval([t])
    return out


def _build_example(name, prefix, tmp_path):
    ex = tmp_path / name
    _run(["cmake", "-S", str(ROOT / "tests" / name), "-B", str(ex), f"-DCMAKE_PREFIX_PATH={prefix}",
          "-DCMAKE_BUILD_TYPE=Release"])
    r = _run(["cmake", "--build", str(ex), "--verbose"], timeout=600)
    return ex, r.stdout


def test_c_program_links_and_matches_python(installed, tmp_path, model, smollm2):
    """project(app C): compiled and linked by the C compiler alone against libheadkv.so."""
    _, prefix = installed
    ex, log = _build_example("c_example", prefix, tmp_path)
    assert "main.c" in log and "stdc++" not in log  # no C++ runtime named on the C link line
    prompt = "The quick brown fox"
    expected = _python_greedy(model, prompt, 12)
    r = _run([str(ex / "app"), smollm2, prompt, "12"], timeout=120)
    assert [int(x) for x in r.stdout.split()] == expected
    # every CPU kernel level (HEADKV_CPU) generates the same tokens
    from headkv import _core
    for level in _core.cpu_levels()[:-1]:
        r = _run([str(ex / "app"), smollm2, prompt, "12"], timeout=300, env={**os.environ, "HEADKV_CPU": level})
        assert [int(x) for x in r.stdout.split()] == expected, level


def test_cpp_program_matches_python(installed, tmp_path, model, smollm2):
    _, prefix = installed
    ex, _ = _build_example("cpp_example", prefix, tmp_path)
    prompt = "Once upon a time"
    r = _run([str(ex / "example"), smollm2, prompt, "12"], timeout=120)
    assert [int(x) for x in r.stdout.split()] == _python_greedy(model, prompt, 12)
    # the installed CLI came along
    assert (prefix / "bin" / "headkv-cli").exists()


def test_installed_library_exports_only_the_c_api(installed):
    _, prefix = installed
    libs = sorted((prefix / "lib").glob("libheadkv.so*")) or sorted((prefix / "lib64").glob("libheadkv.so*"))
    assert libs, "libheadkv.so was not installed"
    syms = _run(["nm", "-D", "--defined-only", str(libs[0])]).stdout.split("\n")
    names = {line.split()[-1] for line in syms if line.strip()}
    assert "hk_model_load" in names and "hk_eval" in names
    assert all(n.startswith("hk_") for n in names), sorted(n for n in names if not n.startswith("hk_"))[:10]
    needed = _run(["readelf", "-d", str(libs[0])]).stdout
    assert "libstdc++" in needed  # the C++ runtime comes as an ordinary shared dependency


def test_isa_objects_define_no_weak_symbols(installed):
    """The per-CPU-level kernel objects (compiled with AVX2 / AVX-512 flags) must not define weak
    (COMDAT) symbols: the linker keeps one copy of each, and an AVX-512 copy of, say, a std::
    template would then run on CPUs without AVX-512."""
    build, _ = installed
    objs = list(build.glob("CMakeFiles/headkv_isa_*.dir/**/*.o"))
    levels = {o.relative_to(build).parts[1] for o in objs}
    assert "headkv_isa_baseline.dir" in levels and len(objs) == 2 * len(levels), objs
    for o in objs:
        weak = [line for line in _run(["nm", "-C", "--defined-only", str(o)]).stdout.splitlines()
                if line.split()[1:2] and line.split()[1] in ("W", "V", "u", "w", "v")]
        assert not weak, f"{o}: {weak[:5]}"


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="no nvcc")
def test_cuda_package_config_names_no_cuda_path(tmp_path):
    """With the CUDA backend the runtime is linked into libheadkv.so, so the exported targets
    (generated at configure time) name no path of this machine's CUDA toolkit."""
    build = tmp_path / "cuda"
    _run(["cmake", "-S", str(ROOT), "-B", str(build), "-DHEADKV_CUDA=ON", "-DCMAKE_BUILD_TYPE=Release"],
         timeout=300)
    exported = list(build.glob("CMakeFiles/Export/**/headkvTargets*.cmake"))
    assert exported
    for f in exported:
        text = f.read_text()
        assert not re.search(r"cuda|cudart", text, re.IGNORECASE), f"{f} names CUDA"
        assert "/usr/" not in text


def test_cli_streams_and_times(smollm2):
    from conftest import tool_path
    r = _run([tool_path("headkv-cli"), "-m", smollm2, "-p", "What is the capital of France?", "--chat",
              "-n", "16", "--temp", "0", "-c", "256", "-t", "2"], timeout=120)
    assert "Paris" in r.stdout
    assert "t/s" in r.stderr and "prompt" in r.stderr


def test_cli_context_file_then_question(smollm2, essays, tmp_path):
    """--context-file: the document is evaluated first and the prompt appended; with the full cache
    the reply equals one prompt holding both (same tokens); compressed with a probe it still runs
    and the prompt count covers both parts."""
    from conftest import tool_path
    # ends at a sentence's end: the token count of document + question then equals the whole prompt's
    doc = essays[2][:1200] + " The secret number of the blue gate is 5606394622. " + essays[3][:1200].rsplit(". ", 1)[0] + "."
    (tmp_path / "doc.txt").write_text(doc)
    q = "What is the secret number of the blue gate?"
    base = [tool_path("headkv-cli"), "-m", smollm2, "--chat", "-n", "24", "--temp", "0", "-c", "4096", "-t", "2"]
    split = _run(base + ["--context-file", str(tmp_path / "doc.txt"), "-p", q], timeout=300)
    whole = _run(base + ["-p", doc + "\n\n" + q], timeout=300)
    assert split.stdout == whole.stdout and "5606394622" in split.stdout
    n_whole = whole.stderr.split("prompt ")[1].split(" tokens")[0]
    comp = _run(base + ["--context-file", str(tmp_path / "doc.txt"), "-p", q, "--kv-method", "snapkv",
                        "--kv-budget", "256", "--probe", "repeat"], timeout=300)
    assert comp.stderr.split("prompt ")[1].split(" tokens")[0] == n_whole
    # With --context-file the default observation is the reconstruction probe: same reply as naming it.
    hk = base + ["--context-file", str(tmp_path / "doc.txt"), "-p", q, "--kv-method", "headkv", "--kv-budget", "256"]
    default, named = _run(hk, timeout=300), _run(hk + ["--probe", "reconstruct"], timeout=300)
    assert default.stdout == named.stdout


def test_cli_headkv_uses_shipped_scores(smollm2, tmp_path):
    """--kv-method headkv without --scores: the shipped R2 file matched by fingerprint (compiled into
    the library, so every front end agrees with Python's default); keeping the same positions as
    naming that file. A model no shipped file matches gets the error naming headkv-scores."""
    from conftest import tool_path
    from gguf_factory import write_tiny_llama
    from headkv.scores import shipped_scores
    base = [tool_path("headkv-cli"), "-m", smollm2, "-p", "The quick brown fox " * 40, "-n", "8", "--temp", "0",
            "-t", "2", "-c", "1024", "--kv-method", "headkv", "--kv-budget", "32"]
    default = _run(base)
    named = _run(base + ["--scores", shipped_scores(smollm2)])
    assert default.stdout == named.stdout and default.stdout
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", smollm2)
    r = subprocess.run([tool_path("headkv-cli"), "-m", str(tiny), "-p", "hello", "-n", "2", "--kv-method", "headkv",
                        "--kv-budget", "32"], capture_output=True, text=True)
    assert r.returncode == 1 and "no shipped score file matches this model" in r.stderr and "headkv-scores" in r.stderr


def _greedy_text(m, text, n=12):
    m.reset()
    m.eval(m.tokenize(text))
    out = []
    for _ in range(n):
        out.append(int(m.logits().argmax()))
        m.eval([out[-1]])
    return m.detokenize(out).decode("utf-8", errors="replace")


def _cli_option_reaches_context(smollm2, method, budget, flag, value, bad_value, name, text):
    """The CLI's greedy tokens with `flag value` equal the Python Model's with name=value (so the option
    reaches the context), and `flag bad_value` is refused naming the setting. Returns those tokens' text."""
    from conftest import tool_path
    base = [tool_path("headkv-cli"), "-m", smollm2, "-p", text, "-n", "12", "--temp", "0", "-t", "2", "-c", "2048",
            "--kv-method", method, "--kv-budget", str(budget)]
    import headkv
    m = headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method=method, kv_budget=budget, **{name: float(value)})
    want = _greedy_text(m, text)
    r = _run(base + [flag, value])
    assert want in r.stdout, (want, r.stdout[-300:])
    bad = subprocess.run(base + [flag, bad_value], capture_output=True, text=True)
    assert bad.returncode == 1 and name in bad.stderr
    return want


def test_cli_cap_ceiling(smollm2, model, essays):
    """--cap-ceiling X reaches the context: on an essay's opening the ceiling (no headkv cap above
    floor(1.05 * 56) = 58, where the scores give some heads more) changes the greedy tokens, and the CLI's are
    the Model's with it; a ceiling below 1 is refused."""
    import headkv
    text = essays[0][:1500]
    got = _cli_option_reaches_context(smollm2, "headkv", 64, "--cap-ceiling", "1.05", "0.5", "cap_ceiling", text)
    plain = headkv.Model(smollm2, n_ctx=2048, n_threads=2, kv_method="headkv", kv_budget=64)
    assert _greedy_text(plain, text) != got


def test_cli_value_fit(smollm2, model):
    """--value-fit L reaches the context; a negative ridge is refused."""
    _cli_option_reaches_context(smollm2, "snapkv", 32, "--value-fit", "1", "-1", "value_fit",
                                "The quick brown fox jumps over the lazy dog. " * 30)


def test_cli_conversation_reuses_prefix(smollm2, model, essays):
    """-cnv: the second turn evaluates only its new tokens and replies what Python's chat completion
    replies for the same conversation (full cache, greedy)."""
    from conftest import tool_path
    doc = essays[2][:1500] + " The secret number of the blue gate is 5606394622. " + essays[3][:1500]
    q1, q2 = doc + "\n\nWhat is the secret number of the blue gate?", "Say it again."
    r = subprocess.run([tool_path("headkv-cli"), "-m", smollm2, "-cnv", "-p", q1, "-n", "20", "--temp", "0",
                        "-t", "2", "-c", "2048"], input=q2 + "\n", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a1, a2 = r.stdout.split("\n")[:2]
    turn = r.stderr.split("turn: ")[1]
    new, reused = int(turn.split(" new tokens")[0]), int(turn.split("(")[1].split(" reused")[0])
    msgs = [{"role": "user", "content": q1}]
    n1 = len(model.tokenize(model.apply_chat_template(msgs), special=True))
    assert reused >= n1 and new < 40
    msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
    py = model.create_chat_completion(msgs, max_tokens=20, temperature=0)["choices"][0]["message"]["content"]
    assert a2 == py
