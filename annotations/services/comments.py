"""Notes on images ("glare on the left, re-shoot?")."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from annotations.models import ImageComment
from inspection.models import Image, Role
from inspection.permissions import require_role


def image_comment_add(*, user, image: Image, text: str) -> ImageComment:
    """Add a comment to an image (any member)."""
    require_role(user, image.project, Role.ANNOTATOR)
    if not isinstance(text, str):
        raise ValidationError({"text": "A comment is text."})
    text = text.strip()
    if not text:
        raise ValidationError({"text": "A comment needs some text."})
    if len(text) > 5000:
        raise ValidationError({"text": "Comments are limited to 5000 characters."})
    return ImageComment.objects.create(image=image, author=user, text=text)
