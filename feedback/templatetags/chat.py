from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def feedback_tags() -> list[str]:
    """The reason tags users may attach to a comment (FEEDBACK_TAGS)."""
    return list(settings.FEEDBACK_TAGS)


@register.filter
def tag_label(tag: str) -> str:
    """``too_long`` -> ``too long``."""
    return tag.replace("_", " ")
