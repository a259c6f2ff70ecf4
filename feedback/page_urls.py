from django.urls import path

from feedback import views

urlpatterns = [
    path("", views.chat_index, name="chat-index"),
    path("c/new", views.chat_new, name="chat-new"),
    path("c/<uuid:conversation_id>/", views.chat_conversation, name="chat-conversation"),
    path("accounts/signup/", views.signup, name="signup"),
]
