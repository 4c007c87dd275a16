"""Mutations of products, deal line items and leads, as the Pipedrive UI or API makes them:
the fake clock's time, the records' shapes, and the deal's ``update_time`` bumped by a change
to its line items (which pdsync assumes; see README)."""

from __future__ import annotations

import random
from typing import Any

from .mutations import Mutations, check_fields, merge_custom
from .records import lead_record, line_item_record, line_item_sum, product_record
from .records import uuid as new_uuid
from .wire import v2_time


class SalesMutations(Mutations):
    """Mutations, plus: add, update and delete products; add, update and remove line items;
    add, update, archive and convert leads."""

    # -- mutations: products and deal line items ---------------------------------------------

    def add_product(self, name: str = "New product", price: float = 100, **fields: Any) -> dict:
        """A new catalogue product priced in SAR (code, unit, tax, category, custom_fields...)."""
        check_fields("product", fields, "products")
        with self.store.lock:
            id_ = self._company.next_id["products"]
            stamp = self._stamp(id_)
            rec = product_record(
                id_,
                name=name,
                code=fields.pop("code", f"NEW-{id_:04d}"),
                unit=fields.pop("unit", "pcs"),
                category=fields.pop("category", "Services"),
                owner_id=fields.pop("owner_id", 1),
                add_time=stamp,
                update_time=stamp,
                prices=[("SAR", price, round(price * 0.7, 2))],
            )
            self._product_fields(rec, fields)
            self._company.next_id["products"] = id_ + 1
            return self._save("products", rec, stamp, stamp)

    def _product_fields(self, rec: dict, fields: dict[str, Any]) -> None:
        check_fields("product", fields, "products")
        for key, value in fields.items():
            if key == "custom_fields":
                merge_custom(rec, value, self._codes("product"))
            else:
                rec[key] = value

    def update_product(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            rec, cols = self._load("products", id)
            self._product_fields(rec, fields)
            return self._save("products", rec, cols["at"], self._stamp(id))

    def delete_product(self, id: int) -> dict[str, Any]:  # noqa: A002
        """Delete a product: the list no longer shows it; line items keep their copy."""
        with self.store.lock:
            rec, cols = self._load("products", id)
            rec["is_deleted"] = True
            return self._save("products", rec, cols["at"], self._stamp(id))

    def _touch_deal(self, deal_id: int, stamp: int) -> None:
        """A line item change bumps its deal's update_time: pdsync's assumption about
        Pipedrive (unverified), which the fake follows."""
        try:
            rec, cols = self._load("deals", deal_id)
        except KeyError:
            return  # a deleted deal stays as it was deleted
        self._save_deal(rec, cols, stamp)

    def add_line_item(
        self, deal_id: int, product_id: int, quantity: float = 1, **fields: Any
    ) -> dict[str, Any]:
        """Attach a product to a deal at its price in the deal's currency (discount, tax...)."""
        check_fields("line item", fields, "deal_products")
        with self.store.lock:
            deal, _ = self._load("deals", deal_id)
            product, _ = self._load("products", product_id)
            id_ = self._company.next_id["deal_products"]
            stamp = self._stamp(id_)
            prices = {p["currency"]: p["price"] for p in product["prices"]}
            order_nr = 1 + (
                self.store.scalar(
                    "SELECT max(order_nr) FROM deal_products WHERE deal_id = ?", [deal_id]
                )
                or 0
            )
            rec = line_item_record(
                id_,
                deal_id=deal_id,
                product=product,
                order_nr=order_nr,
                currency=deal["currency"],
                quantity=quantity,
                item_price=fields.pop("item_price", prices.get(deal["currency"], 100)),
                discount=fields.pop("discount", 0),
                discount_type=fields.pop("discount_type", "percentage"),
                tax_method="exclusive",
                add_time=stamp,
                update_time=stamp,
            )
            rec.update(fields)
            self._company.next_id["deal_products"] = id_ + 1
            self.store.put("deal_products", rec, stamp, stamp)
            self._touch_deal(deal_id, stamp)
            return rec

    def update_line_item(self, id: int, **fields: Any) -> dict[str, Any]:  # noqa: A002
        """Change a line item's quantity, price, discount or tax; its sum follows."""
        check_fields("line item", fields, "deal_products")
        with self.store.lock:
            rec, cols = self._load("deal_products", id)
            self._load("deals", rec["deal_id"])  # a deleted deal's products cannot change
            stamp = self._stamp(id)
            rec.update(fields)
            method = rec["tax_method"]
            rec["sum"] = line_item_sum(
                rec["quantity"],
                rec["item_price"],
                rec["discount"],
                rec["discount_type"],
                rec["tax"] if method != "none" else 0,
                method,
            )
            rec["update_time"] = self._time(id, stamp)
            self.store.put("deal_products", rec, stamp, cols["at"])
            self._touch_deal(rec["deal_id"], stamp)
            return rec

    def remove_line_item(self, id: int) -> None:  # noqa: A002
        """Take a product off a deal: the API forgets the line item."""
        with self.store.lock:
            rec, _ = self._load("deal_products", id)
            self._load("deals", rec["deal_id"])  # a deleted deal's products cannot change
            self.store.query("DELETE FROM deal_products WHERE id = ?", [id])
            self._touch_deal(rec["deal_id"], self._stamp(rec["deal_id"]))

    # -- mutations: leads (ids are UUIDs; the store keys them by order) ---------------------

    def _load_lead(self, id_: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
        key = self.store.scalar("SELECT id FROM leads WHERE uuid = ?", [id_])
        if key is None:
            raise KeyError(f"lead {id_} not found")
        rec, cols = self._load("leads", key)
        return key, rec, cols

    def _save_lead(self, key: int, rec: dict, at: int, **extra: Any) -> dict:
        stamp = self.now_ms()  # lead times carry milliseconds
        rec["update_time"] = v2_time(stamp, True)
        self.store.put("leads", rec, stamp, at, id=key, **extra)
        return rec

    def _lead_fields(self, rec: dict, fields: dict[str, Any]) -> None:
        """Custom fields are top-level keys, and one without a value is left out."""
        check_fields("lead", fields, "leads")
        for key, value in fields.items():
            if key == "custom_fields":
                unknown = set(value or {}) - self._codes("deal")
                if unknown:
                    raise ValueError(f"unknown custom field codes: {', '.join(sorted(unknown))}")
                for code, v in (value or {}).items():
                    if v is None:
                        rec.pop(code, None)
                    else:
                        rec[code] = v
            elif key == "value" and isinstance(value, tuple):
                rec["value"] = {"amount": value[0], "currency": value[1]}
            else:
                rec[key] = value

    def add_lead(self, title: str = "New lead", **fields: Any) -> dict[str, Any]:
        """A new lead in the inbox (owner_id, person_id, organization_id, label_ids, value as
        (amount, currency), expected_close_date, custom_fields...), created through the API."""
        with self.store.lock:
            key = self._company.next_id["leads"]
            stamp = self.now_ms()
            rec = lead_record(
                new_uuid(self._rng_for_ids()),
                title=title,
                owner_id=fields.pop("owner_id", 1),
                person_id=fields.pop("person_id", None),
                organization_id=fields.pop("organization_id", None),
                label_ids=fields.pop("label_ids", []),
                source_name="API",
                value=None,
                expected_close_date=None,
                is_archived=False,
                was_seen=False,
                add_time=stamp,
                update_time=stamp,
            )
            self._lead_fields(rec, fields)
            self._company.next_id["leads"] = key + 1
            return self._save_lead(key, rec, stamp)

    def _rng_for_ids(self) -> random.Random:
        # New UUIDs follow from the lead count: a seeded company stays reproducible.
        return random.Random(f"lead-{self._company.next_id['leads']}")

    def update_lead(self, id: str, **fields: Any) -> dict[str, Any]:  # noqa: A002
        with self.store.lock:
            key, rec, cols = self._load_lead(id)
            self._lead_fields(rec, fields)
            return self._save_lead(key, rec, cols["at"])

    def archive_lead(self, id: str, archived: bool = True) -> dict[str, Any]:  # noqa: A002
        """Move a lead to (or back from) the archive: /v1/leads/archived lists it."""
        with self.store.lock:
            key, rec, cols = self._load_lead(id)
            rec["is_archived"] = archived
            return self._save_lead(key, rec, cols["at"])

    def convert_lead(self, id: str, pipeline_id: int | None = None) -> dict[str, Any]:  # noqa: A002
        """Convert a lead to a deal: Pipedrive deletes the lead (no list shows it any more)
        and creates the deal with the lead's title, value, contacts and owner."""
        with self.store.lock:
            key, rec, cols = self._load_lead(id)
            value = rec.get("value") or {}
            deal = self.add_deal(
                title=rec["title"],
                value=value.get("amount", 0),
                currency=value.get("currency", "SAR"),
                owner_id=rec["owner_id"],
                person_id=rec.get("person_id"),
                org_id=rec.get("organization_id"),
                pipeline_id=pipeline_id or 1,
            )
            self.store.put(
                "leads",
                rec,
                cols["ut"],
                cols["at"],
                id=key,
                converted_at=self.now_ms(),
                deal_id=deal["id"],
            )
            return deal
