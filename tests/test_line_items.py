"""Products, deal line items and reference lists, over real HTTP against the fake."""

from urllib.parse import parse_qs

import sqlite_utils
from helpers import custom_field_problems, differences


def asked(fake, path):
    return [r for r in fake.requests if r["path"] == path]


def deal_ids(request):
    return parse_qs(request["query"])["deal_ids"][0].split(",")


def test_first_sync_asks_line_items_only_for_deals_with_products(fake, run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake) == []
    with_items = {i["deal_id"] for i in fake.records("deal_products")}
    requests = asked(fake, "/api/v2/deals/products")
    ids = [int(x) for r in requests for x in deal_ids(r)]
    assert sorted(ids) == sorted(with_items)  # each deal with products once, no other
    assert len(requests) == -(-len(with_items) // 100)
    fks = {(fk.column, fk.other_table) for fk in db["deal_products"].foreign_keys}
    assert fks == {("deal_id", "deals"), ("product_id", "products")}
    assert db.execute("select count(*) from deals where products_count > 0").fetchone()[0] == len(
        with_items
    )


def test_product_custom_fields_are_readable_columns(fake, run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    origin = next(f for f in fake.records("product_fields") if f["field_name"] == "Origin")
    labels = {o["id"]: o["label"] for o in origin["options"]}
    rows = {r["id"]: r for r in db["products"].rows}
    for product in fake.records("products"):
        value = product["custom_fields"].get(origin["field_code"])
        assert rows[product["id"]]["origin"] == (labels[value] if value else None)
    assert custom_field_problems(db, fake) == []


def test_changed_added_and_removed_line_items_land_in_the_next_run(fake, run_sync, db_path):
    assert run_sync().ok
    items = fake.records("deal_products")
    products = fake.records("products")
    fake.advance(5)
    removed, changed = items[0], items[-1]
    fake.remove_line_item(removed["id"])
    fake.update_line_item(changed["id"], quantity=99)
    deal = next(d for d in fake.records("deals") if not d["is_deleted"] and d["id"] != 1)
    added = fake.add_line_item(deal["id"], products[1]["id"], quantity=3)
    fake.update_product(products[0]["id"], name="Gate valve, revised")
    fake.reset_log()
    result = run_sync()
    assert result.ok
    db = sqlite_utils.Database(db_path)
    assert differences(db, fake) == []
    assert db["deal_products"].get(changed["id"])["quantity"] == 99
    assert db["deal_products"].get(added["id"])["deal_id"] == deal["id"]
    assert not db.execute("select 1 from deal_products where id = ?", [removed["id"]]).fetchall()
    # Only the three deals that changed were asked about: one request.
    requests = asked(fake, "/api/v2/deals/products")
    assert len(requests) == 1
    assert set(deal_ids(requests[0])) == {
        str(removed["deal_id"]),
        str(changed["deal_id"]),
        str(deal["id"]),
    }


def test_last_line_item_removed_and_full_reconciles(fake, run_sync, db_path):
    assert run_sync().ok
    items = fake.records("deal_products")
    deal_id = items[0]["deal_id"]
    fake.advance(5)
    for item in [i for i in items if i["deal_id"] == deal_id]:
        fake.remove_line_item(item["id"])  # products_count drops to 0
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert (
        db.execute("select count(*) from deal_products where deal_id = ?", [deal_id]).fetchone()[0]
        == 0
    )
    # A line item changed without its deal's update_time moving (the unverified
    # assumption failing): only --full sees it.
    other = fake.records("deal_products")[0]
    fake.store.put("deal_products", {**other, "quantity": 77}, 1, 1)
    assert run_sync().ok
    assert db["deal_products"].get(other["id"])["quantity"] != 77
    fake.reset_log()
    assert run_sync(full=True).ok
    assert db["deal_products"].get(other["id"])["quantity"] == 77
    with_items = {i["deal_id"] for i in fake.records("deal_products")}
    assert len(asked(fake, "/api/v2/deals/products")) == -(-len(with_items) // 100)


def test_reference_lists_wait_an_hour_unless_asked(fake, run_sync, db_path):
    assert run_sync().ok
    db = sqlite_utils.Database(db_path)
    assert db["currencies"].count == 8 and db["lead_sources"].count == 10
    assert {r["name"] for r in db["lead_labels"].rows} == {"Hot", "Warm", "Cold", "Tender"}
    fake.reset_log()
    assert run_sync().ok
    paths = {r["path"] for r in fake.requests}
    assert not paths & {
        "/v1/currencies",
        "/v1/activityTypes",
        "/v1/leadLabels",
        "/api/v2/activityFields",
    }
    fake.reset_log()
    assert run_sync(only=["currencies"]).ok
    assert {r["path"] for r in fake.requests} == {"/v1/currencies"}
    # An hour later they are due again.
    db.execute(
        "update sync_metadata set last_success_time = '2000-01-01T00:00:00Z'"
        " where entity_type = 'lead_labels'"
    )
    db.conn.commit()
    fake.reset_log()
    assert run_sync().ok
    assert "/v1/leadLabels" in {r["path"] for r in fake.requests}


def test_a_second_change_in_the_same_second_is_not_missed(tmp_path):
    """Pipedrive's update_time has whole seconds: a line item changed again within the
    second a deal was last asked about leaves the deal's update_time as it was. A deal changed
    that recently is asked about once more on the next run."""
    from datetime import datetime, timezone

    from helpers import FAST_CLIENT

    import pdsync
    from pdsync.fake import FakePipedrive, FakeServer

    frozen = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakePipedrive(deals=60, seed=3, now=frozen)  # the fake's clock stands still
    db_path = str(tmp_path / "p.db")
    try:
        with FakeServer(fake) as server:

            def run():
                return pdsync.sync(
                    db_path,
                    token=fake.token,
                    base_url=server.url,
                    auth_path=None,
                    client_options=FAST_CLIENT,
                )

            assert run().ok
            item = next(
                i
                for i in fake.records("deal_products")
                if i["deal_id"] % 3  # whole-second update_times (the fake varies)
                and not next(d for d in fake.records("deals") if d["id"] == i["deal_id"])[
                    "is_deleted"
                ]
            )
            fake.update_line_item(item["id"], quantity=7)
            assert run().ok
            deal_time = next(d for d in fake.records("deals") if d["id"] == item["deal_id"])
            fake.update_line_item(item["id"], quantity=9)  # the same second: same update_time
            again = next(d for d in fake.records("deals") if d["id"] == item["deal_id"])
            assert again["update_time"] == deal_time["update_time"]
            assert run().ok
            db = sqlite_utils.Database(db_path)
            assert db["deal_products"].get(item["id"])["quantity"] == 9
            assert differences(db, fake) == []
    finally:
        fake.close()


def test_a_first_load_of_line_items_finds_each_batchs_old_children_by_index(tmp_path):
    """Each batch deletes its parents' other line items (Store.replace_children); on a first
    load the table's indexes wait for the load, but a scan per batch would grow with the
    square of the account: the parent-column index is there from the start."""
    from pdsync.entities import builtin_entities
    from pdsync.schema import prepare

    db = sqlite_utils.Database(tmp_path / "fresh.db")
    entities = builtin_entities()
    prepare(db, entities)
    assert db["deal_products"].count == 0
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "explain query plan delete from deal_products where deal_id in (?, ?)", [1, 2]
        )
    )
    # an index leading with deal_id (which one SQLite picks is its choice), not a scan
    assert plan.startswith("SEARCH deal_products USING") and "(deal_id=?)" in plan, plan
    # The other indexes still wait for the load (one build each, not one update per row).
    assert "idx_deal_products_product_id" not in {i.name for i in db["deal_products"].indexes}
