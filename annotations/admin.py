from django.contrib import admin

from .models import Annotation, DefectCategory


@admin.register(DefectCategory)
class DefectCategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "project", "color", "shortcut"]


@admin.register(Annotation)
class AnnotationAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "category", "kind", "source", "author", "version"]
    list_filter = ["source", "kind"]
