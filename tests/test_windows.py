from relaywatch.core.windows import WindowCounter


def test_counts_slide_out_of_the_window():
    c = WindowCounter(nbuckets=3)
    assert c.add(10, "a") == 1
    assert c.add(11, "a") == 2
    assert c.add(12, "a") == 3
    assert c.add(13, "a") == 3  # bucket 10 left the window
    assert c.add(20, "b") == 1
    assert c.totals == {"b": 1}


def test_an_event_older_than_the_window_is_not_counted():
    c = WindowCounter(nbuckets=2)
    c.add(10, "a")
    assert c.add(5, "a") == 1


def test_a_late_event_inside_the_window_counts_in_the_newest_bucket():
    c = WindowCounter(nbuckets=3)
    c.add(10, "a")
    c.add(11, "b")
    assert c.add(10, "a") == 2
    c.add(13, "x")  # bucket 10 leaves; the late "a" was counted in bucket 11
    assert c.totals.get("a") == 1


def test_groups_keep_totals_and_distinct_keys():
    c = WindowCounter(nbuckets=2, group=lambda ip: ip.rsplit(".", 1)[0])
    for bucket, ip in [(1, "10.0.0.1"), (1, "10.0.0.1"), (1, "10.0.0.2"), (2, "10.0.0.3"), (2, "10.0.1.1")]:
        c.add(bucket, ip)
    assert c.group_totals == {"10.0.0": 4, "10.0.1": 1}
    assert c.group_keys == {"10.0.0": 3, "10.0.1": 1}
    c.add(3, "10.0.0.3")  # bucket 1 leaves
    assert c.group_totals == {"10.0.0": 2, "10.0.1": 1}
    assert c.group_keys == {"10.0.0": 1, "10.0.1": 1}
    c.add(5, "10.9.9.9")
    assert c.group_totals == {"10.9.9": 1} and c.group_keys == {"10.9.9": 1} and len(c) == 1


def test_keys_without_a_group_are_counted_but_not_grouped():
    c = WindowCounter(nbuckets=2, group=lambda ip: None)
    assert c.add(1, "192.168.0.10") == 1
    assert c.group_totals == {} and c.group_keys == {}
