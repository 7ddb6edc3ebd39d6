"""Accounts, sessions and roles. Personal data stays here; other areas know only user ids."""
