"""The core API's routes: viewsets on a router; the file routes whose names are URLs."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="api-project")
router.register("images", views.ImageViewSet, basename="api-image")
router.register("jobs", views.JobViewSet, basename="api-job")
router.register("models", views.ModelVersionViewSet, basename="api-model")
router.register("regions", views.RegionViewSet, basename="api-region")
router.register("users", views.UserViewSet, basename="api-user")
router.register("stations", views.StationViewSet, basename="api-station")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("auth/token/", views.TokenView.as_view(), name="api-token"),
    path("me/", views.MeView.as_view(), name="api-me"),
    path(
        "images/<int:pk>/dzi/image.dzi",
        views.ImageViewSet.as_view({"get": "dzi"}),
        name="api-image-dzi",
    ),
    re_path(
        r"^images/(?P<pk>\d+)/dzi/image_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.jpg$",
        views.ImageViewSet.as_view({"get": "tile"}),
        name="api-image-tile",
    ),
    path(
        "images/<int:pk>/heatmap.png",
        views.ImageViewSet.as_view({"get": "heatmap"}),
        name="api-image-heatmap",
    ),
    path(
        "images/<int:pk>/reference/image.dzi",
        views.ImageViewSet.as_view({"get": "reference_dzi"}),
        name="api-image-reference-dzi",
    ),
    re_path(
        r"^images/(?P<pk>\d+)/reference/image_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.jpg$",
        views.ImageViewSet.as_view({"get": "reference_tile"}),
        name="api-image-reference-tile",
    ),
    path(
        "images/<int:pk>/difference.png",
        views.ImageViewSet.as_view({"get": "difference"}),
        name="api-image-difference",
    ),
    path(
        "stations/<int:pk>/results.csv",
        views.StationViewSet.as_view({"get": "results_csv"}),
        name="api-station-results-csv",
    ),
    path(
        "stations/<int:pk>/latest.jpg",
        views.StationViewSet.as_view({"get": "latest_frame"}),
        name="api-station-latest-frame",
    ),
    *router.urls,
]
