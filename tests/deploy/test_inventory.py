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
