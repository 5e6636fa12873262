"""The designs this system replaces, kept only for the benchmark: one ORM insert per request or per task."""
