from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from feedback.models import Conversation, Message, MessageStep
from models_registry.models import ModelVersion


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class ModelVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelVersion

    kind = ModelVersion.Kind.POLICY
    number = factory.Sequence(lambda n: n + 1)
    artifact_path = factory.LazyAttribute(lambda v: f"var/artifacts/{v.kind}/v{v.number}")


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    user = factory.SubFactory(UserFactory)
    title = factory.Sequence(lambda n: f"Conversation {n}")


class UserMessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    conversation = factory.SubFactory(ConversationFactory)
    role = Message.Role.USER
    content = "How do I boil an egg?"


class AssistantMessageFactory(factory.django.DjangoModelFactory):
    """An answer to a user turn, with ``steps`` numbered steps."""

    class Meta:
        model = Message
        skip_postgeneration_save = True

    conversation = factory.SubFactory(ConversationFactory)
    role = Message.Role.ASSISTANT
    parent = factory.SubFactory(UserMessageFactory, conversation=factory.SelfAttribute("..conversation"))
    content = "1. Boil water.\n2. Add the egg.\n3. Wait nine minutes."
    status = Message.Status.COMPLETE

    @factory.post_generation
    def steps(self, create: bool, extracted: int | None, **kwargs: object) -> None:
        count = 3 if extracted is None else extracted
        if create:
            MessageStep.objects.bulk_create(
                [MessageStep(message=self, index=i, content=f"Step {i + 1}.") for i in range(count)]
            )
