"""Billing: quota balances and their ledger, vouchers, usage records, prices and scheduled academy
allowances. Depends only on db/, config and the audit log."""
