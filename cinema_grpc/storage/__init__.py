"""PostgreSQL storage: rows, repositories, the unit of work, advisory locks and migrations."""
