"""The domain: users, products, orders and their actors, payments, events, webhooks.
Each module asks `db` for data and raises a Refusal (db/refusals.py) for what a rule
does not allow; it knows nothing of HTTP."""
