from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.db import router

from writes.errors import NoShardSelected
from writes.models import ApiKey, RejectedWrite, Tenant, WriteLog
from writes.routing import TenantContext, logical_shard_for, tenant_context


def test_router_refuses_a_shard_query_with_no_tenant():
    with pytest.raises(NoShardSelected):
        list(WriteLog.objects.all())
    with pytest.raises(NoShardSelected):
        router.db_for_write(RejectedWrite)


def test_router_sends_shard_models_to_the_tenant_shard_and_control_models_to_default():
    with tenant_context(TenantContext(tenant_id=uuid.uuid4(), shard="shard_1")):
        assert WriteLog.objects.all().db == "shard_1"
        assert Tenant.objects.all().db == "default"
    assert ApiKey.objects.all().db == "default"
    assert WriteLog.objects.using("shard_0").db == "shard_0"


def test_router_migrates_each_model_only_where_it_lives():
    assert router.allow_migrate("shard_0", "writes", model_name="writelog")
    assert not router.allow_migrate("default", "writes", model_name="writelog")
    assert router.allow_migrate("default", "writes", model_name="tenant")
    assert not router.allow_migrate("shard_1", "writes", model_name="apikey")
    assert not router.allow_migrate("shard_0", "auth", model_name="user")


def test_logical_shard_for_is_stable_and_spread():
    tenant_id = uuid.UUID("7d1c1e1a-0000-4000-8000-000000000001")
    assert logical_shard_for(tenant_id) == logical_shard_for(uuid.UUID(str(tenant_id)))
    shards = {logical_shard_for(uuid.uuid4()) for _ in range(2000)}
    assert len(shards) > 200
    assert all(0 <= s < 256 for s in shards)
    assert len(settings.SHARD_ALIASES) >= 2
