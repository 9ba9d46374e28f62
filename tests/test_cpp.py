"""Builds the C++ library with CMake, runs the C++ unit tests (ctest), installs the package and
builds a user program against it with find_package(headkv)."""
import os
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
          "-DCMAKE_BUILD_TYPE=Release", f"-DHEADKV_CUDA={cuda}"])
    _run(["cmake", "--build", str(build), "-j", "2"], timeout=1800)
    _run(["cmake", "--install", str(build), "--prefix", str(prefix)])
    return build, prefix


def test_ctest_unit_tests(installed):
    build, _ = installed
    r = _run(["ctest", "--test-dir", str(build), "--output-on-failure"], timeout=600)
    assert "tests passed" in r.stdout


def test_find_package_example_matches_python(installed, tmp_path, model, smollm2):
    _, prefix = installed
    ex = tmp_path / "example"
    _run(["cmake", "-S", str(ROOT / "tests" / "cpp_example"), "-B", str(ex), f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", str(ex)], timeout=600)
    prompt = "The quick brown fox"
    r = _run([str(ex / "example"), smollm2, prompt, "12"], timeout=120)
    ids = [int(x) for x in r.stdout.split()]
    model.reset()
    expected = []
    model.eval(model.tokenize(prompt))
    for _ in range(12):
        t = int(model.logits().argmax())
        expected.append(t)
        model.eval([t])
    assert ids == expected
    # the installed CLI came along
    assert (prefix / "bin" / "headkv-cli").exists()


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
