"""Bad input gives a typed headkv.Error in Python and a message + non-zero exit in the CLI."""
import shutil
import struct
import subprocess

import pytest

import headkv
from conftest import tool_path
from gguf_factory import patch, tensor_info_positions, write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", smollm2)


def _copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def bad_files(tmp, tiny):
    """(name, path, expected error class, text the message must contain)."""
    cases = [("missing", tmp / "nope.gguf", headkv.HeadkvIOError, "cannot open")]
    (tmp / "dir.gguf").mkdir()
    cases.append(("directory", tmp / "dir.gguf", headkv.HeadkvIOError, "directory"))
    (tmp / "text.gguf").write_text("this is not a model, just text that is long enough")
    cases.append(("not gguf", tmp / "text.gguf", headkv.FormatError, "not a GGUF"))
    (tmp / "empty.gguf").write_bytes(b"")
    cases.append(("empty", tmp / "empty.gguf", headkv.FormatError, "not a GGUF"))
    data = open(tiny, "rb").read()
    (tmp / "trunc_header.gguf").write_bytes(data[:200])
    cases.append(("truncated header", tmp / "trunc_header.gguf", headkv.FormatError, "truncated"))
    (tmp / "trunc_data.gguf").write_bytes(data[:-1000])
    cases.append(("truncated data", tmp / "trunc_data.gguf", headkv.FormatError, "outside the file"))
    p = _copy(tiny, tmp / "magic.gguf")
    patch(p, 0, "<I", 0x12345678)
    cases.append(("wrong magic", p, headkv.FormatError, "bad magic"))
    p = _copy(tiny, tmp / "version.gguf")
    patch(p, 4, "<I", 7)
    cases.append(("wrong version", p, headkv.FormatError, "version 7"))
    p = _copy(tiny, tmp / "offset.gguf")
    _, off_pos = tensor_info_positions(p)["blk.1.ffn_down.weight"]
    patch(p, off_pos, "<Q", 1 << 40)
    cases.append(("offset out of range", p, headkv.FormatError, "outside the file"))
    p = _copy(tiny, tmp / "misaligned.gguf")
    patch(p, off_pos, "<Q", 3)
    cases.append(("misaligned offset", p, headkv.FormatError, "not aligned"))
    p = _copy(tiny, tmp / "overlap.gguf")  # ffn_down (same bytes as ffn_up) placed on ffn_up's data
    pos = tensor_info_positions(p)
    with open(p, "rb") as f:
        f.seek(pos["blk.1.ffn_up.weight"][1])
        up_off = struct.unpack("<Q", f.read(8))[0]
    patch(p, pos["blk.1.ffn_down.weight"][1], "<Q", up_off)
    cases.append(("tensors sharing bytes", p, headkv.FormatError, "overlap in the file"))
    p = _copy(tiny, tmp / "type.gguf")
    type_pos, _ = tensor_info_positions(p)["blk.0.attn_q.weight"]
    patch(p, type_pos, "<I", 9999)
    cases.append(("unknown type id", p, headkv.UnsupportedError, "unknown type"))
    p = _copy(tiny, tmp / "iq.gguf")
    patch(p, type_pos, "<I", 20)  # IQ4_NL: a real ggml type headkv does not implement (same 32-block)
    cases.append(("unsupported type", p, headkv.UnsupportedError, "does not support"))
    arch = write_tiny_llama(tmp / "arch.gguf", tiny, arch="gpt2")
    cases.append(("unsupported architecture", arch, headkv.UnsupportedError, "architecture 'gpt2'"))
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny):
    return bad_files(tmp_path_factory.mktemp("bad"), tiny)


def test_tiny_model_loads_and_runs(tiny):
    m = headkv.Model(str(tiny), n_ctx=64, n_threads=2)
    m.eval(m.tokenize("hello world"))
    assert m.logits().shape == (m.n_vocab,)


def test_bad_files_raise_typed_errors(cases):
    for name, path, cls, text in cases:
        with pytest.raises(cls) as ei:
            headkv.Model(str(path))
        assert isinstance(ei.value, headkv.Error), name
        assert text in str(ei.value), f"{name}: {ei.value}"


def test_cli_bad_files_exit_nonzero(cases):
    cli = tool_path("headkv-cli")
    for name, path, _, text in cases:
        r = subprocess.run([cli, "-m", str(path), "-p", "hi", "-n", "1"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, name
        assert "error" in r.stderr and text in r.stderr, f"{name}: {r.stderr}"


def test_bad_arguments(model, smollm2):
    with pytest.raises(headkv.ContextFullError):
        headkv.Model(smollm2, n_ctx=8).create_completion("word " * 40, max_tokens=1)
    with pytest.raises(headkv.InvalidArgumentError):
        model.create_completion("hi", temperature=float("nan"))
    with pytest.raises(headkv.InvalidArgumentError):
        model.create_completion("hi", top_p=-1)
    with pytest.raises(headkv.InvalidArgumentError):
        model.eval([model.n_vocab + 5])
    with pytest.raises(headkv.InvalidArgumentError):
        headkv.Model(smollm2, n_ctx=-1)
    with pytest.raises(headkv.UnsupportedError):
        headkv.Model(smollm2, device="tpu")
    # The model stays usable after every error.
    out = model.create_completion("The sky is", max_tokens=3, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1


def test_cli_bad_arguments(smollm2):
    cli = tool_path("headkv-cli")
    for args, text in ((["-p", "hi"], "no model"), (["-m", smollm2], "no prompt"),
                       (["-m", smollm2, "-p", "hi", "-n", "x"], "invalid integer"),
                       (["-m", smollm2, "-p", "hi", "--bogus"], "unknown argument"),
                       (["-m", smollm2, "-p", "word " * 50, "-c", "8"], "context"),
                       (["-m", smollm2, "-p", "hi", "--temp", "-1"], "temperature")):
        r = subprocess.run([cli] + args, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and text in r.stderr, (args, r.stderr)
