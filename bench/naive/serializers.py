"""The textbook validation of the baselines: a ModelSerializer per request."""

from __future__ import annotations

from rest_framework import serializers

from bench.naive.models import NaiveEvent


class NaiveEventSerializer(serializers.ModelSerializer[NaiveEvent]):
    class Meta:
        model = NaiveEvent
        fields = ["id", "name", "distinct_id", "timestamp", "properties"]
        read_only_fields = ["id"]
