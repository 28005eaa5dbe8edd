"""The labeling side's pages (included at the site root by the project URLconf)."""

from django.urls import path

from annotations import views

urlpatterns = [
    path("projects/<int:pk>/", views.project_images, name="project"),
    path("projects/<int:pk>/settings/", views.project_settings, name="project-settings"),
    path("projects/<int:pk>/label-next/", views.label_next, name="label-next"),
    path("projects/<int:pk>/review/", views.review_page, name="review"),
    path("projects/<int:pk>/datasets/", views.datasets_page, name="project-datasets"),
    path("runs/<int:pk>/", views.run_page, name="run"),
    path("images/<int:pk>/", views.image_page, name="image-page"),
    path("images/<int:pk>/workspace.json", views.image_page_data, name="image-page-data"),
]
