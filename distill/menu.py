"""Menus as data: generate reference orders from a menu file and price orders with it.

A menu file (YAML, in a task folder) lists sizes, drinks with a price per size,
and modifiers with a surcharge per cup (see ``tasks/coffee_order/menu.yaml``).
Nothing here knows about coffee: any menu of the same shape works (a pizza
menu with sizes and toppings, a sandwich bar, ...).

* :func:`generate_orders` is the ``menu_orders`` source parser: it draws seeded,
  reproducible orders from the menu, each record carrying its reference label
  (``items`` + ``total_price``) so stage 03 can verify the teacher against it.
* :func:`price_check` is the price validation of 07 and of chained runs: does
  a predicted total agree with the menu price of the predicted items, and with
  the reference total?
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .io import StageError, stable_hash


@dataclass(frozen=True)
class Menu:
    currency: str
    sizes: list[str]
    drinks: dict[str, dict[str, float]]
    modifiers: dict[str, float]
    generate: dict

    def drink(self, name: Any) -> str | None:
        """The menu's spelling of a drink name (case and spacing insensitive), or None."""
        return _lookup(name, self.drinks)

    def modifier(self, name: Any) -> str | None:
        return _lookup(name, self.modifiers)


def _key(s: Any) -> str:
    return " ".join(str(s).lower().replace("-", " ").split())


def _lookup(name: Any, table: dict) -> str | None:
    if not isinstance(name, str):
        return None
    k = _key(name)
    return next((n for n in table if _key(n) == k), None)


def load_menu(path: str | os.PathLike) -> Menu:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"{path}: unreadable menu ({exc})") from exc
    if not isinstance(raw, dict):
        raise StageError(f"{path}: a menu is a mapping with sizes, drinks and modifiers")
    unknown = set(raw) - {"currency", "generate", "sizes", "drinks", "modifiers"}
    if unknown:
        raise StageError(f"{path}: unknown key(s) {sorted(unknown)}")
    sizes, drinks, mods = raw.get("sizes"), raw.get("drinks"), raw.get("modifiers") or {}
    if not (isinstance(sizes, list) and sizes and isinstance(drinks, dict) and drinks):
        raise StageError(f"{path}: needs a non-empty sizes list and drinks mapping")
    for d, prices in drinks.items():
        if not isinstance(prices, dict) or set(prices) != set(sizes):
            raise StageError(f"{path}: drink {d!r} needs a price for each size {sizes}")
        if not all(isinstance(v, (int, float)) and v >= 0 for v in prices.values()):
            raise StageError(f"{path}: drink {d!r} has a price that is not a non-negative number")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in mods.values()):
        raise StageError(f"{path}: every modifier needs a non-negative surcharge")
    gen = raw.get("generate") or {}
    bad = set(gen) - {"orders", "seed", "max_items", "max_quantity", "max_modifiers"}
    if bad:
        raise StageError(f"{path}: unknown generate key(s) {sorted(bad)}")
    return Menu(currency=str(raw.get("currency", "")), sizes=list(sizes),
                drinks={d: {s: float(p) for s, p in v.items()} for d, v in drinks.items()},
                modifiers={m: float(p) for m, p in mods.items()}, generate=gen)


def price_item(menu: Menu, item: dict) -> float | None:
    """Price of one line (all cups), or None when the drink, size, a modifier or the quantity is unknown."""
    if not isinstance(item, dict):
        return None
    drink = menu.drink(item.get("name"))
    size = next((s for s in menu.sizes if _key(s) == _key(item.get("size", ""))), None)
    qty = item.get("quantity", 1)
    if drink is None or size is None or not isinstance(qty, int) or isinstance(qty, bool) or qty < 1:
        return None
    mods = [menu.modifier(m) for m in item.get("modifiers") or []]
    if any(m is None for m in mods):
        return None
    return round((menu.drinks[drink][size] + sum(menu.modifiers[m] for m in mods)) * qty, 2)


def price_order(menu: Menu, items: Any) -> float | None:
    if not isinstance(items, list):
        return None
    prices = [price_item(menu, it) for it in items]
    return None if any(p is None for p in prices) else round(sum(prices), 2)


def render_line(item: dict) -> str:
    """'2 x Large Latte - Oat Milk, Extra Shot' (what the teacher is shown in stage 02)."""
    qty = item.get("quantity", 1)
    mods = ", ".join(m.title() for m in item.get("modifiers") or [])
    return (f"{qty} x " if qty != 1 else "") + f"{str(item['size']).title()} {item['name']}" + (f" - {mods}" if mods else "")


def _to_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(str(v).strip().lstrip("$"))
    except (TypeError, ValueError):
        return None


def price_check(menu: Menu, pred: dict | None, ref: dict | None = None, *, items: str = "items",
                total: str = "total_price", tolerance: float = 0.01) -> dict:
    """One prediction's price validation.

    ``priced``: every predicted item is on the menu; ``consistent``: the predicted
    total equals the menu price of the predicted items; ``correct``: it equals the
    reference total (None without a reference). A prediction with an empty item list
    has nothing to price: priced and consistent are None, not a vacuous True.
    """
    if not isinstance(pred, dict):
        return {"priced": False, "consistent": False, "correct": False if ref else None, "menu_total": None}
    menu_total = price_order(menu, pred.get(items))
    got = _to_number(pred.get(total))
    want = _to_number(ref.get(total)) if isinstance(ref, dict) else None
    has_items = pred.get(items) != []
    return {"priced": menu_total is not None if has_items else None,
            "consistent": (menu_total is not None and got is not None and abs(got - menu_total) <= tolerance)
            if has_items else None,
            "correct": (got is not None and want is not None and abs(got - want) <= tolerance) if ref else None,
            "menu_total": menu_total, "predicted_total": got, "reference_total": want}


def summarize_price_checks(checks: list[dict]) -> dict:
    n = len(checks)
    out = {"n": n}
    for k in ("priced", "consistent", "correct"):
        vals = [c[k] for c in checks if c.get(k) is not None]
        out[f"{k}_rate"] = round(sum(vals) / len(vals), 4) if vals else None
    return out


def generate_orders(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """The ``menu_orders`` source parser: seeded reference orders drawn from a menu file.

    Each record: ``id``, ``order_lines`` (readable lines for the teacher), the
    reference label fields ``items`` and ``total_price``, and ``reference`` (the
    label as one object). Same menu + same ``generate:`` settings = same records.
    """
    path = Path(path)
    menu = load_menu(path)
    g = {"orders": 200, "seed": 7, "max_items": 3, "max_quantity": 3, "max_modifiers": 2} | menu.generate
    rng = random.Random(g["seed"])
    drinks, mods = sorted(menu.drinks), sorted(menu.modifiers)
    records, seen = [], set()
    attempts = 0
    while len(records) < g["orders"] and attempts < g["orders"] * 20:
        attempts += 1
        items = []
        # Small orders are the common case: weight one drink highest.
        n_items = rng.choices(range(1, g["max_items"] + 1), weights=[2 ** -i for i in range(g["max_items"])])[0]
        for name in rng.sample(drinks, n_items):
            k = rng.choices(range(g["max_modifiers"] + 1), weights=[3, 2, 1][: g["max_modifiers"] + 1] or [1])[0]
            items.append({"name": name, "size": rng.choice(menu.sizes),
                          "quantity": rng.choices(range(1, g["max_quantity"] + 1),
                                                  weights=[4] + [1] * (g["max_quantity"] - 1))[0],
                          "modifiers": sorted(rng.sample(mods, k))})
        label = {"items": items, "total_price": price_order(menu, items), "not_on_menu": []}
        rid = "order-" + stable_hash(label, length=12)
        if rid in seen:  # the same order drawn twice: one record only
            continue
        seen.add(rid)
        records.append({"id": rid, "order_lines": [render_line(it) for it in items], "items": items,
                        "total_price": label["total_price"], "currency": menu.currency,
                        "n_items": len(items), "reference": label})
    report = {"parser": "menu_orders", "source_file": path.name, "encoding": "utf-8", "rows_read": len(records),
              "duplicates_dropped": attempts - len(records), "duplicate_ids_dropped": 0, "unparseable": {},
              "records": len(records), "generate": g}
    return records, report
