from django.urls import path

from feedback import api

# The seed's paths have no trailing slash. The same paths with one are accepted too, so neither form
# ever redirects a POST; the schema lists only the first (rlhf_site.schema drops the twins).
routes = [
    ("feedback", api.FeedbackCollectionApi, "feedback-collection"),
    ("feedback/<int:feedback_id>", api.FeedbackDetailApi, "feedback-detail"),
    ("comparisons", api.ComparisonCollectionApi, "comparison-collection"),
    ("conversations", api.ConversationListApi, "conversation-list"),
    ("conversations/<uuid:conversation_id>", api.ConversationDetailApi, "conversation-detail"),
    ("conversations/<uuid:conversation_id>/messages", api.ConversationMessagesApi, "conversation-messages"),
    ("satisfaction", api.SatisfactionApi, "satisfaction"),
]

urlpatterns = [path(route, view.as_view(), name=name) for route, view, name in routes] + [
    path(f"{route}/", view.as_view()) for route, view, _ in routes
]
