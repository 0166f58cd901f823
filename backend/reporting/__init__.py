"""Reporting: the whitelisted table browser, the daily usage roll-up and demo data."""
