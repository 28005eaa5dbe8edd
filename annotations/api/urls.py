"""The labeling side's API routes (included under api/ by the project URLconf)."""

from rest_framework.routers import SimpleRouter

from . import datasets, threshold_effect, views

router = SimpleRouter()
router.register(
    r"projects/(?P<project_pk>\d+)/categories", views.CategoryViewSet, basename="api-category"
)
router.register(
    r"projects/(?P<project_pk>\d+)/datasets", datasets.DatasetVersionViewSet, basename="api-dataset"
)
router.register("projects", views.ProjectLabelsViewSet, basename="api-project")
router.register("images", views.ImageLabelsViewSet, basename="api-image")
router.register("annotations", views.AnnotationViewSet, basename="api-annotation")
router.register("suggestions", views.SuggestionViewSet, basename="api-suggestion")
router.register("runs", views.RunViewSet, basename="api-run")
router.register("models", threshold_effect.ModelThresholdEffectViewSet, basename="api-model-effect")
router.register("dataset-exports", datasets.DatasetExportViewSet, basename="api-dataset-export")

urlpatterns = router.urls
