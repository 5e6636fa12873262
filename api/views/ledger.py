"""The ledger over HTTP: accounts are created synchronously (201/200, 409 on a conflict) and read
with their balance and ``as_of``. Transfers are writes, served by the edge (``api.edge.app``); their
operation here documents them in the schema."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import openapi
from api.errors import ServedByEdge
from api.openapi import MIN_POSITION
from api.params import min_position_param, path_id, with_timed_out
from api.views.health import read_json_body, tenant_of
from readmodels.selectors.ledger import account_balance
from writes.ledger import account_create
from writes.schemas import ISO_4217, AccountIn, FieldError, ValidationFailed, parse_one

MAX_ACCOUNT_BODY_BYTES = 4 * 1024


class AccountsView(APIView):
    @extend_schema(
        operation_id="ledger_accounts_create",
        summary="Create a ledger account",
        description="Synchronous. The same id with the same attributes answers 200 with the account; with other "
        "attributes 409. `no_overdraft` accounts can never go below zero: transfers that would are rejected "
        "(`insufficient_funds`).",
        request=openapi.request_one("AccountIn"),
        responses={
            201: OpenApiResponse(response=openapi.ref("AccountOut"), description="Created."),
            200: OpenApiResponse(response=openapi.ref("AccountOut"), description="Already existed, identical."),
            409: OpenApiResponse(response=openapi.ref("Error"), description="Exists with other attributes."),
            **openapi.ERROR_RESPONSES,
            **openapi.BODY_RESPONSES,
        },
    )
    def post(self, request: Request) -> Response:
        body = read_json_body(request, max_bytes=MAX_ACCOUNT_BODY_BYTES)
        item = parse_one(body, AccountIn)
        if item.currency not in ISO_4217:
            raise ValidationFailed(
                "Unknown currency.", [FieldError(None, "currency", f"{item.currency!r} is not an ISO 4217 code.")]
            )
        tenant = tenant_of(request)
        result = account_create(
            tenant=tenant, account_id=item.id, currency=item.currency, no_overdraft=item.no_overdraft
        )
        found = account_balance(shard=tenant.shard, tenant_id=tenant.tenant_id, account_id=item.id)
        response = Response(found, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
        response["Location"] = f"/api/v1/ledger/accounts/{item.id}"
        return response


class AccountView(APIView):
    @extend_schema(
        operation_id="ledger_account",
        summary="A ledger account and its balance",
        description="For `no_overdraft` accounts the balance is strongly consistent (`consistency: strong`); for "
        "the others it is the projection, as of `as_of`.",
        parameters=[MIN_POSITION],
        responses={200: openapi.response_of("AccountOut"), **openapi.ERROR_RESPONSES},
    )
    def get(self, request: Request, account_id: str) -> Response:
        tenant = tenant_of(request)
        min_position = min_position_param(request.query_params.get("min_position"))
        found = account_balance(
            shard=tenant.shard, tenant_id=tenant.tenant_id, account_id=path_id(account_id, "account_id")
        )
        if found is None:
            raise NotFound("No account with this id.")
        return Response(with_timed_out(found, min_position))


class TransfersView(APIView):
    @extend_schema(
        operation_id="ledger_transfers_create",
        summary="Record transfers",
        description='One transfer or `{"batch": [...]}`; `id` is required (the idempotency key). Both accounts '
        "must exist, hold the transfer's currency and differ. A transfer that would take a `no_overdraft` "
        "account below zero is rejected when applied: `GET /api/v1/writes/{id}` says `insufficient_funds`.",
        request=openapi.request_of("TransferIn"),
        responses=openapi.WRITE_RESPONSES,
    )
    def post(self, request: Request) -> Response:
        raise ServedByEdge
