"""Accounts: who someone is — the one Principal and token check (`identity`), users, admins,
API keys, sign-in limits, rate limits, and the visibility rule of the seed-003 services. Above
billing (a registration grants quota)."""
