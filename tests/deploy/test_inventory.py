"""fleet.toml loading: the shipped example is valid; every mistake is reported with file and line."""

from pathlib import Path

import pytest

from taoflow.deploy import InventoryError, load_inventory
from taoflow.deploy.ssh import host_pattern, trusted_keys

EXAMPLE = Path(__file__).resolve().parents[2] / "specs" / "fleet.example.toml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOgQ7UezQU4SVFxawOUpFZW+YlwNkjNb9NDk17CcgCv"


def write(tmp_path, text):
    (tmp_path / "id_ed25519").write_text("not read at load time\n")
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


BASE = f"""[defaults]
user = "nvidia"
key = "id_ed25519"
device_root = "/home/nvidia/taoflow"

[[devices]]
name = "nano-01"
host = "10.0.0.21"
host_key = "{KEY}"
tags = ["lobby", "canary"]

[[devices]]
name = "nano-02"
host = "10.0.0.22"
port = 2222
"""


def test_example_inventory_is_valid():
    fleet = load_inventory(EXAMPLE, check_files=False)
    assert len(fleet.devices) >= 3 and fleet.concurrency >= 1
    assert all(d.device_root.startswith("/") and d.python.startswith("/") for d in fleet.devices)


def test_defaults_merge_relative_key_and_selection(tmp_path):
    fleet = load_inventory(write(tmp_path, BASE))
    one, two = fleet.devices
    assert one.key == tmp_path / "id_ed25519" and one.port == 22 and two.port == 2222
    assert one.tags == ("lobby", "canary") and one.source == f"{tmp_path / 'fleet.toml'}:6"
    assert [d.name for d in fleet.select(tags=["canary"])] == ["nano-01"]
    with pytest.raises(InventoryError, match="no device named nano-09"):
        fleet.select(names=["nano-09"])


def test_known_hosts_pattern_and_trusted_keys(tmp_path):
    one, two = load_inventory(write(tmp_path, BASE)).devices
    assert host_pattern(one) == "10.0.0.21" and host_pattern(two) == "[10.0.0.22]:2222"
    trusted, *_ = trusted_keys(one).match("10.0.0.21", "10.0.0.21", 22)
    assert {k.export_public_key().decode().split()[1] for k in trusted} == {KEY.split()[1]}
    assert trusted_keys(two).match("10.0.0.22", "10.0.0.22", 2222)[0] == []  # nothing trusted: refused


@pytest.mark.parametrize("mutate, line, message", [
    (lambda t: t.replace('port = 2222', 'port = "2222"'), 15, "port must be int"),
    (lambda t: t.replace('port = 2222', 'port = 70000'), 15, "port 70000 is out of range"),
    (lambda t: t.replace('name = "nano-02"', 'name = "nano-01"'), 13, "used twice (first at line 6)"),
    (lambda t: t.replace('host = "10.0.0.22"', 'hots = "10.0.0.22"'), 14, "unknown field 'hots'"),
    (lambda t: t.replace('host = "10.0.0.22"\n', ''), 12, "device needs 'host'"),
    (lambda t: t.replace(f'host_key = "{KEY}"', 'host_key = "ssh-ed25519 AAAAnotakey"'), 9, "host_key is not"),
    (lambda t: t.replace('tags = ["lobby", "canary"]', 'tags = "lobby"'), 10, "tags must be a list"),
    (lambda t: t.replace('device_root = "/home/nvidia/taoflow"', 'device_root = "taoflow"'), 4,
     "device_root must be an absolute path"),
    (lambda t: t.replace('user = "nvidia"', 'usr = "nvidia"'), 2, "unknown field 'usr' in [defaults]"),
    (lambda t: t.replace('[[devices]]\nname = "nano-02"', '[[devices]\nname = "nano-02"'), 12, "invalid TOML"),
])
def test_errors_name_file_and_line(tmp_path, mutate, line, message):
    path = write(tmp_path, mutate(BASE))
    with pytest.raises(InventoryError) as e:
        load_inventory(path)
    assert message in str(e.value) and e.value.path == str(path) and e.value.line == line, str(e.value)


def test_missing_key_file_is_reported_at_its_line(tmp_path):
    path = write(tmp_path, BASE.replace('key = "id_ed25519"', 'key = "nope"'))
    with pytest.raises(InventoryError, match="SSH key file .*nope not found") as e:
        load_inventory(path)
    assert e.value.line == 3
    assert load_inventory(path, check_files=False).devices[0].key.name == "nope"


# -- hostile inventories: every malformed file is an InventoryError naming the file, never another exception -------

MINIMAL = 'name = "nano-01"\nhost = "10.0.0.21"\nuser = "nvidia"\nkey = "id"\ndevice_root = "/opt/t"\n'


@pytest.mark.parametrize("content, line, message", [
    (b'[[devices]]\nname = "nano-\xff01"\n', 2, "not UTF-8 text (byte 0xff)"),
    (b"devices = [1, 2]\n", None, "each device must be a [[devices]] table, not 1"),
    (b"defaults = 5\n[[devices]]\n" + MINIMAL.encode(), 1, "defaults must be a table"),
    (b'devices = "nano-01"\n', 1, "devices must be a list of [[devices]] tables"),
    (b"[devices]\n" + MINIMAL.encode(), 1, "devices must be a list of [[devices]] tables"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"connect_timeout = nan\n", 7, "connect_timeout must be a finite"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"command_timeout = inf\n", 7, "command_timeout must be a finite"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"build_timeout = 1e400\n", 7, "build_timeout must be a finite"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"build_timeout = 100000000000000000000\n", 7, "<= 2.592e+06"),
    (b"[[devices]]\n" + MINIMAL.replace('"id"', '"~no-such-user-taoflow/id"').encode(), 5, "cannot expand ~"),
    (b"[[devices]]\n" + MINIMAL.replace('"id"', '"' + "k" * 5000 + '"').encode(), 5, "SSH key file"),
    (b"[[devices]]\n" + MINIMAL.replace('"nvidia"', '"nv idia"').encode(), 4, "user must not contain spaces"),
    (b"[[devices]]\n" + MINIMAL.replace('"10.0.0.21"', '"10.0.0.21\\n"').encode(), 3, "control characters"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"host_key = 5\n", 7, "host_key must be str"),
    (b"[[devices]]\n" + MINIMAL.encode() + b'host_key = "ssh-ed25519 !!!"\n', 7, "host_key is not"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"known_hosts = [1]\n", 7, "known_hosts must be str"),
    (b"[defaults]\nconcurrency = true\n[[devices]]\n" + MINIMAL.encode(), 2, "concurrency must be int"),
    (b"[defaults]\npython = 3\n[[devices]]\n" + MINIMAL.encode(), 2, "python must be str"),
    (b"[[devices]]\n" + MINIMAL.encode() + b"[devices.extra]\nx = 1\n", None, "unknown field 'extra'"),
])
def test_malformed_inventories_are_inventory_errors(tmp_path, content, line, message):
    path = tmp_path / "fleet.toml"
    path.write_bytes(content)
    (tmp_path / "id").write_text("key\n")
    before = path.read_bytes()
    with pytest.raises(InventoryError) as e:
        load_inventory(path)
    assert message in str(e.value) and e.value.path == str(path), str(e.value)
    if line is not None:
        assert e.value.line == line, str(e.value)
    assert path.read_bytes() == before


def test_device_errors_name_the_device(tmp_path):
    path = write(tmp_path, BASE.replace("port = 2222", 'port = "2222"'))
    with pytest.raises(InventoryError) as e:
        load_inventory(path)
    assert e.value.device == "nano-02" and str(e.value).startswith(f"{path}:15: nano-02: port must be int")


def test_a_directory_or_unreadable_file_is_an_inventory_error(tmp_path):
    with pytest.raises(InventoryError, match="is a directory; give the inventory file"):
        load_inventory(tmp_path)
    with pytest.raises(InventoryError, match="inventory file not found"):
        load_inventory(tmp_path / "missing.toml")


def test_a_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "id").write_text("key\n")
    path = tmp_path / "fleet.toml"
    path.write_bytes(b"\xef\xbb\xbf[[devices]]\n" + MINIMAL.encode())
    assert [d.name for d in load_inventory(path).devices] == ["nano-01"]


# Property-based: arbitrary text, and arbitrary TOML structures built from the real keys, give a Fleet or an
# InventoryError with the file's path, never any other exception.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = sorted(["user", "port", "key", "known_hosts", "device_root", "python", "connect_timeout",
                 "command_timeout", "build_timeout", "concurrency", "keep", "name", "host",
                 "host_key", "tags", "bogus"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                     st.sampled_from(["/opt/t", "nano-01", "10.0.0.1", "id", "~", "~nobody-xyz/k", KEY, "", "a b",
                                      "x\x00y", "/", "ssh-ed25519 AAAA"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3)),
                       max_leaves=8)
_device = st.dictionaries(st.sampled_from(_KEYS), _values, max_size=8)
_document = st.fixed_dictionaries({}, optional={
    "defaults": st.one_of(_values, st.dictionaries(st.sampled_from(_KEYS), _values, max_size=6)),
    "devices": st.one_of(_values, st.lists(_device, max_size=3)),
    "other": _values})


def _toml(value):
    """A TOML value (inline form) for a Python value; None becomes a missing key (TOML has no null)."""
    import json
    import math
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string accepts JSON's escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"


def _render(document):
    lines = []
    for key, value in document.items():
        if key == "devices" and isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
            continue
        if value is not None:
            lines.append(f"{key} = {_toml(value)}")
    for table in document.get("devices") if isinstance(document.get("devices"), list) else []:
        if isinstance(table, dict) and all(isinstance(d, dict) for d in document["devices"]):
            lines.append("[[devices]]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _load_or_inventory_error(path):
    try:
        return load_inventory(path)
    except InventoryError as e:
        assert e.path == str(path) and str(e).startswith(str(path)), str(e)
        return e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_document)
def test_property_any_structure_loads_or_is_an_inventory_error(tmp_path, document):
    (tmp_path / "id").write_text("key\n")
    path = tmp_path / "fleet.toml"
    path.write_text(_render(document), encoding="utf-8")
    result = _load_or_inventory_error(path)
    if not isinstance(result, InventoryError):
        assert result.devices and all(d.device_root.startswith("/") for d in result.devices)


_fragments = st.sampled_from(["[defaults]", "[[devices]]", "[devices]", "name = ", "host = ", "port = ", "tags = ",
                              "user = ", "key = ", "device_root = ", '"nano-01"', '"/opt/t"', "22", "[1, 2]", "5",
                              "nan", "{a = 1}", "\n", "=", "'", '"', "[", "]", "\\u0000", "1e400", "\xff", "é"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.one_of(_fragments, st.text(max_size=8)), max_size=30).map("".join),
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_property_any_text_or_bytes_loads_or_is_an_inventory_error(tmp_path, text, raw):
    path = tmp_path / "fleet.toml"
    path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    _load_or_inventory_error(path)
