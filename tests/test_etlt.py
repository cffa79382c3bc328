""".etlt with NVIDIA's codec (taoflow.etlt): TAO Deploy's header, round trips, wrong keys, the `taoflow etlt` CLI,
the native `export --etlt`, and the key never reaching a command line, a log or a file."""

import json
import logging
import struct
import subprocess
import textwrap

import pytest

import taoflow.etlt as etlt
from tests.etlt_support import KEY, codec_python, taoflow, tiny_onnx  # noqa: F401 (fixture)


def tao_deploy_decode(python, path, key):
    """Decode as TAO Deploy's decode_etlt does (nvidia_tao_deploy/utils/decoding.py), in the codec's interpreter
    and independently of taoflow's worker: (input name, payload bytes)."""
    script = textwrap.dedent("""
        import struct, sys, io
        from eff_tao_encryption.tao_codec import decrypt_stream
        key = sys.stdin.readline().strip()
        out = io.BytesIO()
        with open(sys.argv[1], "rb") as f:
            size = struct.unpack("<i", f.read(4))[0]
            name = f.read(size)
            decrypt_stream(f, out, key.encode(), encryption=True, rewind=False)
        sys.stdout.buffer.write(struct.pack("<i", len(name)) + name + out.getvalue())
    """)
    data = subprocess.run([str(python), "-I", "-c", script, str(path)], input=(key + "\n").encode(),
                          capture_output=True, check=True).stdout
    size = struct.unpack("<i", data[:4])[0]
    return data[4:4 + size].decode(), data[4 + size:]


def test_header_is_tao_deploys_and_the_round_trip_is_exact(codec_python, tmp_path):  # noqa: F811
    model = tiny_onnx(tmp_path / "m.onnx")
    out = etlt.encode_file(model, tmp_path / "m.etlt", KEY)
    raw = out.read_bytes()
    assert raw[:4] == struct.pack("<i", 0)  # an ONNX payload: empty input name
    assert len(raw) == 4 + 16 + model.stat().st_size  # CTR: the nonce, then as many bytes as the payload
    assert tao_deploy_decode(codec_python, out, KEY) == ("", model.read_bytes())
    decoded = etlt.decode_file(out, tmp_path / "back.onnx", KEY)
    assert (tmp_path / "back.onnx").read_bytes() == model.read_bytes()
    assert decoded.payload == "onnx" and decoded.facts["inputs"] == ["Input"] and decoded.facts["ops"] == ["Relu"]
    # a random nonce: two encodings differ, both decode to the same model
    again = etlt.encode_file(model, tmp_path / "m2.etlt", KEY).read_bytes()
    assert again != raw and etlt.decode_bytes(tmp_path / "m2.etlt", KEY).data == model.read_bytes()


def test_uff_payload_header_names_the_input_node(codec_python, tmp_path):  # noqa: F811
    uff = tmp_path / "m.uff"
    uff.write_bytes(b"\x0a\x05Input\x12\x03abc" * 20)  # protobuf-shaped bytes standing in for a UFF graph
    out = etlt.encode_file(uff, tmp_path / "m.etlt", KEY, input_name="Input")
    assert out.read_bytes()[:9] == struct.pack("<i", 5) + b"Input"
    assert etlt.read_header(out).payload == "uff"
    assert tao_deploy_decode(codec_python, out, KEY) == ("Input", uff.read_bytes())
    decoded = etlt.decode_bytes(out, KEY)
    assert (decoded.payload, decoded.input_name, decoded.data) == ("uff", "Input", uff.read_bytes())


@pytest.mark.usefixtures("codec_python")
def test_wrong_key_is_a_clear_error_not_garbage(tmp_path):
    out = etlt.encode_file(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.etlt", KEY)
    with pytest.raises(etlt.WrongKeyError, match="wrong key") as e:
        etlt.decode_file(out, tmp_path / "x.onnx", "not-the-key")
    assert str(out) in str(e.value) and not (tmp_path / "x.onnx").exists()
    with pytest.raises(etlt.WrongKeyError, match="sha256 differs"):
        etlt.decode_bytes(out, KEY, expect_sha256="0" * 64)
    uff = tmp_path / "m.uff"
    uff.write_bytes(b"\x0a\x05Input\x12\x03abc" * 20)
    etlt.encode_file(uff, tmp_path / "u.etlt", KEY, input_name="Input")
    with pytest.raises(etlt.WrongKeyError, match="not a UFF graph"):
        etlt.decode_bytes(tmp_path / "u.etlt", "not-the-key")


@pytest.mark.parametrize("content, why", [(b"", "shorter than its 4-byte header"),
                                          (b"\x01\x02", "shorter than its 4-byte header"),
                                          (struct.pack("<i", 9999) + b"x" * 40, "input-name length of 9999"),
                                          (struct.pack("<i", -3) + b"x" * 40, "input-name length of -3"),
                                          (struct.pack("<i", 0) + b"short", "input-name length of 0")])
def test_not_an_etlt_names_the_file_without_needing_the_codec(tmp_path, content, why):
    path = tmp_path / "bad.etlt"
    path.write_bytes(content)
    with pytest.raises(etlt.EtltError, match=why) as e:
        etlt.read_header(path)
    assert str(path) in str(e.value) and e.value.exit_code == 2


def test_no_codec_python_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(etlt, "find_base_pythons", lambda: [])
    etlt._resolve.cache_clear()
    with pytest.raises(etlt.CodecUnavailable, match="CPython 3.10 or 3.12") as e:
        etlt._resolve(None, str(tmp_path))
    assert "TAOFLOW_ETLT_PYTHON" in str(e.value) and "pyenv install 3.10" in str(e.value)
    assert e.value.exit_code == 1
    with pytest.raises(etlt.CodecUnavailable, match="no such file"):
        etlt._resolve(str(tmp_path / "nope" / "python3"), str(tmp_path))
    etlt._resolve.cache_clear()


@pytest.mark.usefixtures("codec_python")
def test_cli_decode_encode_info_and_exit_codes(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    env = {"TAO_MODEL_KEY": KEY}
    code, out, err = taoflow("etlt", "encode", model, "-o", tmp_path / "m.etlt", env=env)
    assert code == 0, err
    code, out, err = taoflow("etlt", "info", tmp_path / "m.etlt", "--json", env=env)
    assert code == 0, err
    info = json.loads(out)
    assert info["payload"] == "onnx" and info["ops"] == ["Relu"] and info["codec"]["python_version"][:4] in (
        "3.10", "3.12")
    code, out, err = taoflow("etlt", "info", tmp_path / "m.etlt", env={"TAO_MODEL_KEY": ""})
    assert code == 0 and "ONNX payload" in out and "no key" in out
    code, out, err = taoflow("etlt", "decode", tmp_path / "m.etlt", "-o", tmp_path / "d.onnx", env=env)
    assert code == 0, err
    assert (tmp_path / "d.onnx").read_bytes() == model.read_bytes()
    # bad input: exit 2, one line naming the file, no traceback
    for argv, env_, needle in [
            (("decode", tmp_path / "m.etlt", "-o", tmp_path / "w.onnx"), {"TAO_MODEL_KEY": "nope"}, "wrong key"),
            (("decode", tmp_path / "m.etlt", "-o", tmp_path / "d.onnx"), env, "already exists"),
            (("decode", model, "-o", tmp_path / "x.onnx"), env, "not a .etlt"),
            (("info", tmp_path / "missing.etlt"), env, "no such file"),
            (("encode", tmp_path / "m.etlt", "-o", tmp_path / "z.etlt"), env, "not an ONNX model"),
            (("decode", tmp_path / "m.etlt", "-o", tmp_path / "y.onnx"), {"TAO_MODEL_KEY": ""}, "no model key")]:
        code, out, err = taoflow("etlt", *argv, env=env_)
        assert code == 2, (argv, err)
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # the codec cannot run: exit 1, saying what to install
    code, out, err = taoflow("etlt", "decode", tmp_path / "m.etlt", "-o", tmp_path / "q.onnx",
                             env={**env, "TAOFLOW_ETLT_PYTHON": str(tmp_path / "nope")})
    assert code == 1 and "no such file" in err and "Traceback" not in err


@pytest.mark.usefixtures("codec_python")
def test_the_key_reaches_the_codec_on_stdin_only(tmp_path, monkeypatch, caplog):
    seen = []
    real_run = subprocess.run

    def spy(argv, *args, **kwargs):
        seen.append((list(map(str, argv)), dict(kwargs.get("env") or {})))
        return real_run(argv, *args, **kwargs)
    monkeypatch.setattr(etlt.subprocess, "run", spy)
    monkeypatch.setenv("TAO_MODEL_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    model = tiny_onnx(tmp_path / "m.onnx")
    etlt.encode_file(model, tmp_path / "m.etlt", KEY)
    etlt.decode_file(tmp_path / "m.etlt", tmp_path / "d.onnx", KEY)
    with pytest.raises(etlt.WrongKeyError):
        etlt.decode_bytes(tmp_path / "m.etlt", KEY + "x")
    assert seen, "the codec ran in a subprocess"
    for argv, env in seen:
        assert not any(KEY in a for a in argv)
        assert not any(KEY in v for v in env.values())  # not even $TAO_MODEL_KEY is inherited
    assert KEY not in caplog.text


def _untrained_checkpoint(root):
    from taoflow.backends.native.build import build_model
    from taoflow.backends.native.checkpoint import save_checkpoint
    from taoflow.spec import load_experiment
    from tests.backends.native.conftest import write_spec

    spec_path = write_spec(root / "spec.txt", root)
    spec = load_experiment(spec_path, task="export")
    model, arch = build_model(spec)
    save_checkpoint(root / "model.pth", model, arch, spec.classes)
    return spec_path, root / "model.pth"


@pytest.mark.usefixtures("codec_python")
def test_native_export_etlt_round_trip_and_no_key_in_artifacts(tmp_path, capsys):
    from tests.backends.native.conftest import cli

    spec, ckpt = _untrained_checkpoint(tmp_path)
    code, text = cli("export", "-e", spec, "-m", ckpt, "-o", tmp_path / "plain" / "model.onnx", "--gen_ds_config")
    assert code == 0, text
    code, text = cli("export", "-e", spec, "-m", ckpt, "-o", tmp_path / "enc" / "model.onnx", "--gen_ds_config",
                     "--etlt", "-k", KEY, "-v")
    assert code == 0, text
    assert KEY not in text + capsys.readouterr().out
    enc = tmp_path / "enc"
    assert sorted(p.name for p in enc.iterdir()) == ["labels.txt", "model.etlt", "model.json", "nvinfer_config.txt"]
    meta = json.loads((enc / "model.json").read_text())
    assert meta["model_file"] == "model.etlt" and meta["output"]["kind"] == "decoded"
    assert meta["etlt"] == {"codec": "eff_tao_encryption", "payload": "onnx", "input_name": "",
                            "payload_sha256": meta["etlt"]["payload_sha256"]}
    decoded = etlt.decode_bytes(enc / "model.etlt", KEY, expect_sha256=meta["etlt"]["payload_sha256"])
    # the same checkpoint exported plain gives the identical ONNX bytes
    assert decoded.data == (tmp_path / "plain" / "model.onnx").read_bytes()
    assert "tlt-encoded-model=model.etlt" in (enc / "nvinfer_config.txt").read_text()
    for path in enc.rglob("*"):
        assert KEY.encode() not in path.read_bytes(), path
    # refusals: no key, an existing output, a .etlt name without --etlt
    code, text = cli("export", "-e", spec, "-m", ckpt, "-o", tmp_path / "x" / "model.etlt", "--etlt")
    assert code == 2 and "needs the model key" in text
    code, text = cli("export", "-e", spec, "-m", ckpt, "-o", enc / "model.onnx", "--etlt", "-k", KEY)
    assert code == 2 and "already exists" in text
    code, text = cli("export", "-e", spec, "-m", ckpt, "-o", tmp_path / "y" / "model.etlt")
    assert code == 2 and "add --etlt" in text


@pytest.mark.usefixtures("codec_python")
def test_flow_executor_keeps_the_plain_onnx_for_the_parity_gate(tmp_path, monkeypatch):
    from taoflow.backends.native.executor import NativeExecutor

    spec, ckpt = _untrained_checkpoint(tmp_path)
    monkeypatch.setenv("TAO_MODEL_KEY", KEY)
    written = NativeExecutor(export_format="etlt").export(spec, ckpt, tmp_path / "out" / "model.onnx", "fp16").files
    assert {k: v.name for k, v in written.items() if k in ("etlt", "onnx", "model_json")} == {
        "etlt": "model.etlt", "onnx": "model.onnx", "model_json": "model.json"}
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["model_file"] == "model.etlt"
    plain = (tmp_path / "out" / "model.onnx").read_bytes()
    assert etlt.decode_bytes(tmp_path / "out" / "model.etlt", KEY).data == plain
