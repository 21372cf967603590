"""The outside systems the domain talks to, behind the interfaces it declares: payment
providers (server/domain/payments/provider.py) and the webhooks' HTTP sender. The
composition root (server/app.py) picks and wires them; the domain never imports them."""
