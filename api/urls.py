"""Routes of the API, mounted under /api/v1/. The edge serves the hot methods of some of them first
(``api.edge.app.HOT_ROUTES``); Django answers everything else."""

from __future__ import annotations

from django.urls import path

from api.views import chat, ledger, stats, writes

urlpatterns = [
    path("events", writes.EventsView.as_view(), name="events"),
    path("writes/<str:write_id>", writes.WriteStatusView.as_view(), name="write-status"),
    path("conversations/<str:conversation_id>", chat.ConversationView.as_view(), name="conversation"),
    path(
        "conversations/<str:conversation_id>/messages",
        chat.ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
    path(
        "conversations/<str:conversation_id>/members",
        chat.ConversationMembersView.as_view(),
        name="conversation-members",
    ),
    path("conversations/<str:conversation_id>/read", chat.ConversationReadView.as_view(), name="conversation-read"),
    path("users/<str:user_id>/inbox", chat.InboxView.as_view(), name="user-inbox"),
    path("ledger/accounts", ledger.AccountsView.as_view(), name="ledger-accounts"),
    path("ledger/accounts/<str:account_id>", ledger.AccountView.as_view(), name="ledger-account"),
    path("ledger/transfers", ledger.TransfersView.as_view(), name="ledger-transfers"),
    path("stats/events", stats.EventStatsView.as_view(), name="stats-events"),
]
