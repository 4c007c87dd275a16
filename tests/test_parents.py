"""fetch.Parents: the parents a dependent stream asks about, held compactly, given back as
the same (id, version) pairs."""

from pdsync.fetch import Parents


def test_pairs_come_back_as_they_went_in():
    pairs = [(i, f"2026-0{1 + i % 9}-1{i % 10}T0{i % 10}:00:5{i % 10}Z") for i in range(1, 500)]
    pairs += [(10**12, None), (-5, "1969-12-31T23:59:59Z"), (7, "9999-12-31T23:59:59Z")]
    parents = Parents(iter(pairs))
    assert len(parents) == len(pairs)
    assert parents[0 : len(pairs)] == pairs
    assert parents[100:200] == pairs[100:200]
    assert parents[len(pairs) - 2 :] == pairs[-2:]


def test_what_does_not_fit_an_integer_is_kept_as_given():
    pairs = [
        (1, "2026-01-01T00:00:00Z"),
        ("text id", None),
        (3, "not a time"),
        (2**70, "2026-01-01T00:00:00Z"),
        (4, "2026-02-30T00:00:00Z"),  # the stored shape, but no such day
    ]
    for start in range(len(pairs)):  # the odd one first, last, or in the middle
        given = pairs[start:] + pairs[:start]
        parents = Parents(given)
        assert len(parents) == len(given)
        assert parents[0 : len(given)] == given


def test_no_parents():
    assert len(Parents([])) == 0 and Parents([])[0:100] == []
