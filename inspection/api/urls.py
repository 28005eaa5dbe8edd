from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from annotations import api as annotation_api
from annotations import review_api

from . import inspections, views

router = DefaultRouter()
router.register("projects", views.ProjectViewSet, basename="api-project")
router.register("images", views.ImageViewSet, basename="api-image")
router.register("jobs", views.JobViewSet, basename="api-job")

categories = views.CategoryViewSet

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("me/", views.MeView.as_view(), name="api-me"),
    path("projects/<int:pk>/members/", views.MemberListView.as_view(), name="api-members"),
    path(
        "projects/<int:pk>/members/<str:username>/",
        views.MemberDetailView.as_view(),
        name="api-member",
    ),
    path(
        "projects/<int:project_pk>/categories/",
        categories.as_view({"get": "list", "post": "create"}),
        name="api-categories",
    ),
    path(
        "projects/<int:project_pk>/categories/<int:pk>/",
        categories.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="api-category",
    ),
    path("projects/<int:pk>/images/", views.ProjectImagesView.as_view(), name="api-project-images"),
    path(
        "projects/<int:pk>/images/rebuild-pyramids/",
        views.RebuildPyramidsView.as_view(),
        name="api-rebuild-pyramids",
    ),
    path(
        "projects/<int:pk>/import/mvtec/", views.MvtecImportView.as_view(), name="api-import-mvtec"
    ),
    path(
        "images/<int:pk>/thumbnail/", views.ImageThumbnailView.as_view(), name="api-image-thumbnail"
    ),
    path("images/<int:pk>/original/", views.ImageOriginalView.as_view(), name="api-image-original"),
    path("images/<int:pk>/dzi/image.dzi", views.ImageDziView.as_view(), name="api-image-dzi"),
    re_path(
        r"^images/(?P<pk>\d+)/dzi/image_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\.jpg$",
        views.ImageTileView.as_view(),
        name="api-image-tile",
    ),
    path("images/<int:pk>/heatmap.png", views.ImageHeatmapView.as_view(), name="api-image-heatmap"),
    path(
        "images/<int:pk>/neighbors/", views.ImageNeighborsView.as_view(), name="api-image-neighbors"
    ),
    path(
        "images/<int:pk>/annotations/",
        annotation_api.ImageAnnotationsView.as_view(),
        name="api-image-annotations",
    ),
    path(
        "images/<int:pk>/verdict/",
        annotation_api.ImageVerdictView.as_view(),
        name="api-image-verdict",
    ),
    path(
        "images/<int:pk>/comments/",
        annotation_api.ImageCommentsView.as_view(),
        name="api-image-comments",
    ),
    path(
        "annotations/<int:pk>/",
        annotation_api.AnnotationDetailView.as_view(),
        name="api-annotation",
    ),
    path(
        "projects/<int:pk>/annotations/",
        annotation_api.ProjectAnnotationsView.as_view(),
        name="api-project-annotations",
    ),
    path(
        "projects/<int:pk>/models/",
        inspections.ProjectModelsView.as_view(),
        name="api-project-models",
    ),
    path("models/<int:pk>/", inspections.ModelVersionView.as_view(), name="api-model"),
    path(
        "models/<int:pk>/activate/",
        inspections.ModelVersionActivateView.as_view(),
        name="api-model-activate",
    ),
    path("projects/<int:pk>/runs/", inspections.ProjectRunsView.as_view(), name="api-project-runs"),
    path("runs/<int:pk>/", inspections.RunView.as_view(), name="api-run"),
    path(
        "projects/<int:pk>/suggestions/",
        review_api.ProjectSuggestionsView.as_view(),
        name="api-project-suggestions",
    ),
    path(
        "projects/<int:pk>/pending-labels/",
        review_api.ProjectPendingLabelsView.as_view(),
        name="api-pending-labels",
    ),
    path(
        "suggestions/<int:pk>/accept/",
        review_api.SuggestionAcceptView.as_view(),
        name="api-suggestion-accept",
    ),
    path(
        "suggestions/<int:pk>/reject/",
        review_api.SuggestionRejectView.as_view(),
        name="api-suggestion-reject",
    ),
    path(
        "annotations/<int:pk>/approve/",
        review_api.AnnotationApproveView.as_view(),
        name="api-annotation-approve",
    ),
    path(
        "annotations/<int:pk>/return/",
        review_api.AnnotationReturnView.as_view(),
        name="api-annotation-return",
    ),
    path(
        "images/<int:pk>/reviews/", review_api.ImageReviewsView.as_view(), name="api-image-reviews"
    ),
    path(
        "images/<int:pk>/suggestions/",
        review_api.ImageSuggestionsView.as_view(),
        name="api-image-suggestions",
    ),
    *router.urls,
]

# Dataset versions: freeze, compare, export, download, import (annotations.dataset_api).
from annotations import dataset_api  # noqa: E402

urlpatterns += [
    path(
        "projects/<int:pk>/datasets/",
        dataset_api.DatasetVersionListView.as_view(),
        name="api-datasets",
    ),
    path(
        "projects/<int:pk>/datasets/compare/",
        dataset_api.DatasetCompareView.as_view(),
        name="api-datasets-compare",
    ),
    path(
        "projects/<int:pk>/datasets/import/",
        dataset_api.DatasetImportView.as_view(),
        name="api-datasets-import",
    ),
    path(
        "projects/<int:pk>/datasets/<int:number>/",
        dataset_api.DatasetVersionDetailView.as_view(),
        name="api-dataset",
    ),
    path(
        "projects/<int:pk>/datasets/<int:number>/exports/",
        dataset_api.DatasetExportView.as_view(),
        name="api-dataset-exports",
    ),
    path(
        "dataset-exports/<uuid:job_id>/download/",
        dataset_api.DatasetExportDownloadView.as_view(),
        name="api-dataset-export-download",
    ),
]
