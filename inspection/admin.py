from django.contrib import admin

from .models import Image, Job, Membership, Project


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "created_by", "created_at"]
    readonly_fields = ["inspection"]  # checked by the service: the models page or the API
    inlines = [MembershipInline]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = [
        "original_name",
        "project",
        "width",
        "height",
        "is_normal",
        "status",
        "pyramid_status",
    ]
    list_filter = ["project", "is_normal", "status", "pyramid_status"]
    readonly_fields = ["sha256", "uid"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["kind", "status", "progress", "project", "created_by", "created_at"]
    list_filter = ["kind", "status"]
