"""Cost accounting and per-tenant budgets: prices (prices.py), the exactly-once ledger of provider calls
(ledger.py), budgets in SQL (budgets.py), their running totals and reservations in Redis (book.py), and
what one run of a job does with them around each provider call (meter.py)."""
