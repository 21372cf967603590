"""Demo catalog data: realistic-looking products, loaded with COPY."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

_ADJECTIVES = (
    "Ergonomic", "Rustic", "Sleek", "Handcrafted", "Vintage", "Compact", "Deluxe", "Portable", "Modern",
    "Classic", "Lightweight", "Heavy-Duty", "Refined", "Minimalist", "Premium", "Everyday", "Smart",
    "Waterproof", "Foldable", "Insulated", "Organic", "Recycled", "Cordless", "Adjustable", "Artisan",
)  # fmt: skip
_MATERIALS = (
    "Oak", "Steel", "Cotton", "Leather", "Bamboo", "Ceramic", "Wool", "Granite", "Copper", "Linen",
    "Walnut", "Aluminium", "Glass", "Canvas", "Marble", "Cork", "Titanium", "Silk", "Rubber", "Brass",
)  # fmt: skip
_NOUNS = (
    "Chair", "Lamp", "Backpack", "Kettle", "Notebook", "Headphones", "Desk", "Mug", "Blanket", "Watch",
    "Sneakers", "Jacket", "Skillet", "Speaker", "Bookshelf", "Teapot", "Umbrella", "Wallet", "Pillow",
    "Bicycle Bell", "Cutting Board", "Water Bottle", "Plant Pot", "Desk Organizer", "Keyboard", "Rug",
)  # fmt: skip
_FEATURES = (
    "built to last for years of daily use", "designed in small batches", "with a lifetime warranty",
    "that fits neatly into any space", "finished by hand", "tested for comfort and durability",
    "made from responsibly sourced materials", "easy to clean and maintain", "with a timeless look",
    "that makes a thoughtful gift", "shipped in plastic-free packaging", "loved by our customers",
)  # fmt: skip
_OPENINGS = ("A", "Our", "This", "The perfect", "An everyday")
COLUMNS = ("name", "description", "price", "currency", "stock", "stock_received", "sku", "created_at", "updated_at")


def products(count: int, *, seed: int | None = None) -> Iterator[tuple[Any, ...]]:
    """`count` product rows in COPY column order (COLUMNS); skus unique per call."""
    rng = random.Random(seed)
    run = secrets.token_hex(3).upper()
    now = datetime.now(UTC)
    year = 365 * 24 * 3600
    for i in range(count):
        adjective, material, noun = rng.choice(_ADJECTIVES), rng.choice(_MATERIALS), rng.choice(_NOUNS)
        name = f"{adjective} {material} {noun} {rng.randint(100, 9999)}"
        description = (
            f"{rng.choice(_OPENINGS)} {adjective.lower()} {noun.lower()} in {material.lower()}, "
            f"{rng.choice(_FEATURES)}. {rng.choice(_FEATURES).capitalize()}."
        )
        # Prices cluster around everyday amounts with a long tail (in cents).
        price = int(rng.lognormvariate(8.0, 1.1)) + 99
        stock = 0 if rng.random() < 0.08 else rng.randint(1, 500)
        created = now - timedelta(seconds=rng.randrange(year))
        yield (name, description, price, "USD", stock, stock, f"DEMO-{run}-{i:08d}", created, created)
