"""Django (DRF) views of the API: reads, ledger accounts, health; the hot routes' schema."""
