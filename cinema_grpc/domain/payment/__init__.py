"""Card payments, refunds and the audit trail of every money movement."""
