from django.urls import re_path

from feedback import api

UUID = r"[0-9a-fA-F-]{32,36}"

# The seed's paths have no trailing slash; one is accepted too, so neither form ever redirects a POST.
urlpatterns = [
    re_path(r"^feedback/?$", api.FeedbackCollectionApi.as_view(), name="feedback-collection"),
    re_path(r"^feedback/(?P<feedback_id>[0-9]+)/?$", api.FeedbackDetailApi.as_view(), name="feedback-detail"),
    re_path(r"^comparisons/?$", api.ComparisonCollectionApi.as_view(), name="comparison-collection"),
    re_path(r"^conversations/?$", api.ConversationListApi.as_view(), name="conversation-list"),
    re_path(
        rf"^conversations/(?P<conversation_id>{UUID})/?$",
        api.ConversationDetailApi.as_view(),
        name="conversation-detail",
    ),
    re_path(
        rf"^conversations/(?P<conversation_id>{UUID})/messages/?$",
        api.ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
    re_path(r"^satisfaction/?$", api.SatisfactionApi.as_view(), name="satisfaction"),
]
