"""Accounts: who someone is — users, admins, API keys, sign-in limits, rate limits, and the caller
of the seed-003 services. Above billing (a registration grants quota)."""
