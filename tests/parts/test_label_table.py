"""LabelTable and LabelSet (label_table.py) against plain dicts and sets: whatever mix of
columns and changes holds a label, lookups, counts and ordered items must agree."""

from __future__ import annotations

import random

import numpy as np

from embeddable_db.engine.sqlite.label_table import LabelSet, LabelTable


def test_a_table_agrees_with_a_dict_through_random_changes():
    rng = random.Random(7)
    base = sorted(rng.sample(range(1, 5_000), 1_000))
    kinds = ["note", "faq", "bot"]
    expected = {label: (f"r{label}", kinds[label % 3]) for label in base}
    table = LabelTable.from_rows((label, *expected[label]) for label in base)
    for step in range(3_000):
        label = rng.randrange(1, 5_200)
        if rng.random() < 0.4:
            assert table.remove(label) == (label in expected)
            expected.pop(label, None)
        else:
            value = (f"r{label}-{step}", rng.choice(kinds))
            table.set(label, *value)
            expected[label] = value
        if step % 500 == 0:
            probes = [rng.randrange(0, 5_300) for _ in range(50)]
            assert table.lookup(probes) == [expected.get(p) for p in probes]
    assert len(table) == len(expected)
    assert list(table.items()) == [(label, *expected[label]) for label in sorted(expected)]
    assert table.labels().tolist() == sorted(expected)
    assert all(table.get(label) == value for label, value in expected.items())
    assert table.get(10**9) is None and 10**9 not in table
    records = table.records()  # what the next manifest lists
    assert records.labels.tolist() == sorted(expected) and len(records) == len(expected)


def test_an_empty_table():
    table = LabelTable()
    assert len(table) == 0 and list(table.items()) == [] and table.lookup([1, 2]) == [None, None]
    table.set(3, "r3", "note")
    assert table.lookup([3, 4]) == [("r3", "note"), None] and len(table) == 1


def test_a_label_set_agrees_with_a_set():
    rng = random.Random(3)
    base = np.array(sorted(rng.sample(range(10_000), 2_000)), np.int64)
    members = LabelSet(base)
    expected = set(base.tolist())
    for _ in range(5_000):
        label = rng.randrange(10_500)
        if rng.random() < 0.5:
            members.add(label)
            expected.add(label)
        else:
            members.discard(label)
            expected.discard(label)
    assert len(members) == len(expected)
    assert all((label in members) == (label in expected) for label in range(10_600))
    members.difference_update(list(expected)[:100])
    members.update([20_000, 20_001])
    assert len(members) == len(expected) - 100 + 2 and 20_001 in members


def test_find_resolves_record_ids_to_live_labels_with_changes_and_collisions(monkeypatch):
    table = LabelTable.from_rows([(1, "a", "x"), (2, "b", "y"), (5, "c", "x"), (9, "d", "y")])
    assert sorted(table.find(["a", "c", "zz"])) == [(1, "a"), (5, "c")]
    assert table.find(["a", "b", "c", "d"], kind="y") == [(2, "b"), (9, "d")]
    table.remove(5)
    table.set(12, "e", "y")
    table.set(2, "b", "x")  # a kind change
    assert sorted(table.find(["a", "b", "c", "e"])) == [(1, "a"), (2, "b"), (12, "e")]
    assert table.find(["b", "e"], kind="x") == [(2, "b")]
    table.set(5, "c", "x")  # back again
    assert (5, "c") in table.find(["c"])


def test_find_confirms_a_hash_match_by_the_id_itself(monkeypatch):
    import embeddable_db.engine.sqlite.label_table as module

    monkeypatch.setattr(module, "hash", lambda value: 7, raising=False)  # every id collides
    table = LabelTable.from_rows([(1, "a", "x"), (2, "b", "y"), (3, "c", "x")])
    assert sorted(table.find(["c", "a", "nope"])) == [(1, "a"), (3, "c")]
