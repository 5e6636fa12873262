"""The read API: read models only, never the log; every answer says how fresh it is."""
