"""Fetch an object named in a URL and check the caller's role in its project, in one step.

A non-member gets 404 and a member whose role is too low gets 403 (see inspection.permissions).
"""

from django.shortcuts import get_object_or_404

from inspection.models import Image, Project, Role
from inspection.permissions import require_role


def project_for(request, pk, minimum: str = Role.ANNOTATOR) -> Project:
    project = get_object_or_404(Project, pk=pk)
    require_role(request.user, project, minimum)
    return project


def image_for(request, pk, minimum: str = Role.ANNOTATOR) -> Image:
    image = get_object_or_404(Image.objects.select_related("project"), pk=pk)
    require_role(request.user, image.project, minimum)
    return image
