"""The domain: users, products, orders and their actors, payments. Each module asks
`db` for data and raises `server.runtime.problems` errors for what a client did wrong."""
