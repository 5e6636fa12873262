"""The benchmark: runs the write path and its naive baselines side by side and records what they absorb.

``python manage.py bench`` (``bench.runner``) starts everything it measures on databases and queues of
its own; ``bench.naive`` holds the baselines and is installed only in ``bench.settings``.
"""
