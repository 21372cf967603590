"""Payments: the provider interface, the simulated provider, and the payment flow."""
