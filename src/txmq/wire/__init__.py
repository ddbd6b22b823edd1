"""The wire format: one home for what travels with a message, on every broker."""
