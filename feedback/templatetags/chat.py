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


@register.simple_tag
def correction_max_length() -> int:
    """The longest corrected answer (FEEDBACK_CORRECTION_MAX_LENGTH)."""
    return int(settings.FEEDBACK_CORRECTION_MAX_LENGTH)
