"""Property-based: the spec loaders turn any text (mutated shipped specs, arbitrary text, arbitrary bytes) into a
spec or a SpecError with a position in the file, never another exception; the CLI then prints one line, exit 2."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taoflow.errors import SpecError, TaoflowError
from taoflow.spec import load_dataset_export, load_experiment, parse_dataset_export_text, parse_experiment_text
from taoflow.spec.experiment import REQUIRED

REPO = Path(__file__).resolve().parents[2]
SPECS = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "specs").glob("*/*.txt"))}
TASKS = sorted(REQUIRED)

# What a hand-edited spec goes wrong with: braces, quotes, numbers out of range or of the wrong kind, NaN.
FRAGMENTS = ["{", "}", ":", "<", ">", "[", "]", ",", ";", '"', "'", "#", "\n", "\\", "-1", "0", "-0", "1e400",
             "1e-400", "nan", "inf", "-inf", "0x10", "99999999999999999999999", "2147483648", "-2147483649",
             "4294967296", "true", "FALSE", "L1", "NO_REG", '"resnet"', '"\\x"', '"\\u0000"', '"é"', "é", "0.0",
             "3.5", "ssd_config", "kitti_config", "target_class_mapping", "num_epochs:", "arch:", "nlayers:",
             "average_precision_mode: 99999999999999999999", "type: 4294967296"]


def _parse_all(text, path="<spec>"):
    """Every way a spec text is loaded: both kinds, every task. Returns how many parsed."""
    ok = 0
    for parse in [lambda t: parse_dataset_export_text(t, path)] + [
            (lambda t, task=task: parse_experiment_text(t, task, path)) for task in TASKS]:
        try:
            parse(text)
            ok += 1
        except SpecError as e:
            assert str(e).startswith(path), str(e)
            if e.line is not None:
                assert 1 <= e.line <= text.count("\n") + 1, (e.line, str(e))
    return ok


@st.composite
def mutated_specs(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    text = SPECS[name]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        fragment = draw(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)))
        if op == "insert":
            text = text[:at] + fragment + text[at:]
        elif op == "replace":
            end = min(len(text), at + draw(st.integers(1, 12)))
            text = text[:at] + fragment + text[end:]
        else:
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
    return text


@settings(max_examples=400, deadline=None)
@given(text=mutated_specs())
def test_property_mutated_specs_parse_or_are_spec_errors(text):
    _parse_all(text)


@settings(max_examples=200, deadline=None)
@given(text=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map(" ".join))
def test_property_arbitrary_text_parses_or_is_a_spec_error(text):
    _parse_all(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), mutated_specs().map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_property_spec_files_load_or_are_spec_errors(tmp_path, data):
    path = tmp_path / "spec.txt"
    path.write_bytes(data)
    for load in (load_dataset_export, lambda p: load_experiment(p, task="train")):
        try:
            load(path)
        except SpecError as e:
            assert e.path == str(path), str(e)
    assert path.read_bytes() == data  # never modified


def test_mutations_do_not_only_produce_errors():
    """The strategy reaches valid specs too (an unmutated one parses), so the property is not vacuous."""
    assert all(_parse_all(text) >= 1 for text in SPECS.values())


def test_enum_number_out_of_range_is_a_spec_error_at_its_line():
    # protobuf raises a bare ValueError (no position) when it sets the enum, after parsing the token
    text = SPECS["ssd_train_resnet18_crpd.txt"].replace("average_precision_mode: SAMPLE",
                                                        "average_precision_mode: 99999999999999999999")
    assert text != SPECS["ssd_train_resnet18_crpd.txt"]
    with pytest.raises(SpecError, match="Value out of range: 99999999999999999999") as e:
        parse_experiment_text(text, "train", "x.txt")
    assert e.value.path == "x.txt" and "99999999999999999999" in text.splitlines()[e.value.line - 1]


def test_directory_and_non_utf8_spec_files(tmp_path):
    with pytest.raises(TaoflowError, match="spec file not found"):
        load_experiment(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b'ssd_config {\n  arch: "res\xffnet"\n}\n')
    with pytest.raises(SpecError, match="not valid UTF-8") as e:
        load_experiment(bad)
    assert e.value.line == 2
