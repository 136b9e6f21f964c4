"""The events and facts: each writes out its `__init__` (compiled, it is native code), so these
hold each `__init__` to the dataclass fields beside it, in either form (pure or compiled), and
check that each can be copied and pickled (compiled, `__new__` runs that `__init__`)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from relaywatch import model
from relaywatch.model import Delivery, Event, RelayDenied, Relayed, Unparsed

# Totals, built once a run, keeps the __init__ dataclass generates
CLASSES = [c for c in vars(model.events).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
           and c.__module__ == model.events.__name__ and c is not model.Totals]


def test_every_event_and_fact_is_reexported_by_model():
    assert {c.__name__ for c in CLASSES} == {
        "Event", "Unparsed", "Forged", "ClientSeen", "Pickup", "ProxyAccept", "QueueActive", "Delivery", "Removed",
        "Reject", "Relayed", "LocalRelayed", "RelayDenied"}
    for cls in [*CLASSES, model.Totals]:
        assert getattr(model, cls.__name__) is cls


def sample(cls: type) -> dict[str, object]:
    """A value of the field's type (compiled, `__init__` checks it), distinct per field, so that a
    swapped assignment shows. By name: compiled, a field's `type` says `type` for `str | None`."""
    kinds = {"time": float, "queued": float, "uid": int, "size": int, "nrcpt": int, "relay_denied": bool}
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        kind = kinds.get(f.name, str)
        values[f.name] = True if kind is bool else i + 0.5 if kind is float else i if kind is int else f"v{i}"
    return values


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_takes_the_fields_in_order_by_position_and_keyword(cls):
    fields = dataclasses.fields(cls)
    values = sample(cls)
    by_keyword = cls(**values)
    assert {f.name: getattr(by_keyword, f.name) for f in fields} == values
    positional = [values[f.name] for f in fields if not f.kw_only]
    by_position = cls(*positional, **{f.name: values[f.name] for f in fields if f.kw_only})
    assert {f.name: getattr(by_position, f.name) for f in fields} == values
    with pytest.raises(TypeError):
        cls(*positional, *(values[f.name] for f in fields if f.kw_only), "one too many")
    assert sum(1 for f in fields if isinstance(values[f.name], bool)) <= 1  # a bool cannot tell two fields apart


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_defaults_are_the_fields_defaults(cls):
    fields = dataclasses.fields(cls)
    required = {f.name: v for f, v in zip(fields, sample(cls).values(), strict=True)
                if f.default is dataclasses.MISSING}
    built = cls(**required)
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(built, f.name) == f.default, f.name
    with pytest.raises(TypeError):
        cls()


def test_events_take_host_by_keyword_only():
    assert Unparsed(1.0, "why", host="mx").host == "mx"
    assert Event(1.0).host == ""
    with pytest.raises(TypeError):
        Unparsed(1.0, "why", "mx")  # type: ignore[misc]


def test_equality_hash_repr_and_replace_stay_the_dataclass_ones():
    d = Delivery(1.0, "Q1", "smtp", "r@x.example", None, "mx[198.51.100.1]:25", "198.51.100.1", "sent", "250 ok",
                 host="mx1")
    same = Delivery(1.0, "Q1", "smtp", "r@x.example", None, "mx[198.51.100.1]:25", "198.51.100.1", "sent", "250 ok",
                    host="mx1")
    assert d == same and hash(d) == hash(same) and d != dataclasses.replace(d, host="mx2")
    assert repr(d).startswith("Delivery(time=1.0, host='mx1', qid='Q1', agent='smtp'")
    assert dataclasses.replace(d, recipient="s@y.example").recipient == "s@y.example"
    # facts: `queued` and `host` are provenance, not part of the fact's identity
    r = Relayed(1.0, "Q1", "203.0.113.9", None, "s@a.example", "r@b.example", "b.example", "sent", 0.5, "mx1")
    other = dataclasses.replace(r, queued=None, host="mx2")
    assert r == other and hash(r) == hash(other) and len({r, other}) == 1
    assert RelayDenied(1.0, "203.0.113.9", None, "mx1") == RelayDenied(1.0, "203.0.113.9", None)
    assert dataclasses.asdict(r)["client"] == "203.0.113.9"


def test_totals_count_and_keep_their_own_samples():
    a, b = model.Totals(), model.Totals(lines=2)
    a.lines += 1
    a.unparsed_samples.append("x")
    assert (a.lines, b.lines, b.unparsed_samples, b.first_time) == (1, 2, [], None)


# Every way a value is taken apart and built again: copy, deepcopy, pickle at every protocol.
COPIES = {"copy": copy.copy, "deepcopy": copy.deepcopy,
          **{f"pickle{p}": (lambda v, p=p: pickle.loads(pickle.dumps(v, protocol=p)))
             for p in range(pickle.HIGHEST_PROTOCOL + 1)}}


def field_values(value: object) -> dict[str, object]:
    """Every field, those left out of == (a fact's `queued` and `host`) included."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_copy_deepcopy_and_pickle_keep_the_class_and_every_field(cls, how):
    original = cls(**sample(cls))
    again = COPIES[how](original)
    assert again is not original and type(again) is cls
    assert field_values(again) == field_values(original) and again == original and hash(again) == hash(original)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_replace_changes_the_one_field_named(cls):
    values = sample(cls)
    original = cls(**values)
    for name, value in values.items():
        other = not value if isinstance(value, bool) else value + 100 if isinstance(value, int | float) else "other"
        changed = dataclasses.replace(original, **{name: other})
        assert type(changed) is cls and field_values(changed) == {**values, name: other}, name
    assert field_values(original) == values


@pytest.mark.parametrize("how", COPIES)
def test_totals_copy_and_pickle_with_their_samples(how):
    totals = model.Totals(lines=5, unparsed=1, relayed=2, first_time=1.5, last_time=9.5, unparsed_samples=["bad line"])
    again = COPIES[how](totals)
    assert type(again) is model.Totals and again == totals
    if how != "copy":  # a shallow copy shares the list, as a dataclass's does
        again.unparsed_samples.append("another")
        assert totals.unparsed_samples == ["bad line"]
