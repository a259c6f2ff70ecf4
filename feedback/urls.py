from core.urls import slash_optional
from feedback import api, insights_api

urlpatterns = slash_optional(
    [
        ("feedback", api.FeedbackCollectionApi, "feedback-collection"),
        ("feedback/<int:feedback_id>", api.FeedbackDetailApi, "feedback-detail"),
        ("comparisons", api.ComparisonCollectionApi, "comparison-collection"),
        ("conversations", api.ConversationListApi, "conversation-list"),
        ("conversations/<uuid:conversation_id>", api.ConversationDetailApi, "conversation-detail"),
        ("conversations/<uuid:conversation_id>/messages", api.ConversationMessagesApi, "conversation-messages"),
        ("conversations/<uuid:conversation_id>/turns", api.ConversationTurnsApi, "conversation-turns"),
        ("satisfaction", api.SatisfactionApi, "satisfaction"),
        ("insights", insights_api.InsightsApi, "insights"),
        ("ws-ticket", api.WsTicketApi, "ws-ticket"),
    ]
)
