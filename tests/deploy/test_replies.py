"""The agent reply protocol (taoflow/deploy/replies.py): arbitrary replies give a checked reply or a ReplyError,
never another exception; device strings come out with their control characters escaped."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taoflow.deploy.agent import parse_reply
from taoflow.deploy.replies import RESULTS, ReplyError, check_reply, clean, expect_current, sanitize

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30)
COMMANDS = sorted(RESULTS) + ["unknown"]
FIELDS = ["runtimes", "models", "modules", "current", "versions", "passed", "fps", "images", "activated",
          "passport", "smoke", "activated_at", "reverted", "history", "detections", "box", "label", "confidence"]
# replies shaped like the real ones, with arbitrary values in the fields the host reads
near_replies = st.fixed_dictionaries({
    "ok": st.booleans() | json_values, "protocol": st.just(1) | json_values,
    "result": st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8) | json_values,
    "cpu_s": st.floats() | json_values, "error": st.text() | json_values})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(COMMANDS), json_values | near_replies)
def test_any_reply_is_checked_or_refused(command, reply):
    try:
        checked = check_reply(command, reply if isinstance(reply, dict) else {"ok": True, "protocol": 1,
                                                                             "result": reply}, "dev")
    except ReplyError as e:
        assert "dev: agent" in str(e)
        return
    assert isinstance(checked["ok"], bool)
    if command in ("activate", "status") and checked["ok"]:
        for name in checked["result"]["models"]:
            try:
                expect_current(checked["result"], name, "v1", command)
            except ReplyError:
                pass


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_stdout_parses_to_a_dict_or_none(text):
    reply = parse_reply(text)
    assert reply is None or isinstance(reply, dict)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_sanitised_values_hold_no_control_characters(value):
    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
    for text in strings(sanitize({"k": value, "\x1b": "\x9b[2J"})):
        assert not any((ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f for c in text), repr(text)


def test_ansi_and_terminal_titles_are_shown_as_text():
    assert clean("\x1b[31mred\x1b[0m\x1b]0;title\x07 ok\n") == "\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07 ok\n"
    assert clean("x" * 50, limit=10).startswith("xxxxxxxxxx... [40 more")


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["result"].update(runtimes=5), "result.runtimes"),
    (lambda r: r.update(cpu_s="lots"), "reply.cpu_s"),
    (lambda r: r.pop("result"), "reply.result"),
    (lambda r: r["result"].update(models=["lpd"]), "result.models"),
    (lambda r: r["result"]["models"]["lpd"].update(current="../../../../etc"), "result.models.lpd.current"),
    (lambda r: r["result"]["models"]["lpd"]["passport"].update(activated_at="yesterday"),
     "result.models.lpd.passport.activated_at"),
])
def test_each_bad_probe_field_is_named(mutate, field):
    reply = {"ok": True, "protocol": 1, "cpu_s": 0.1, "result": {
        "runtimes": ["onnxruntime"], "modules": {"numpy": "1.19.5"},
        "models": {"lpd": {"current": "abc", "passport": {"activated_at": 1.5}}}}}
    check_reply("probe", json.loads(json.dumps(reply)))
    mutate(reply)
    with pytest.raises(ReplyError, match=f"malformed reply: {field.replace('.', '[.]')}"):
        check_reply("probe", reply, "dev")
