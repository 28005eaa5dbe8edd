from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from inspection import views

handler404 = "inspection.api.errors.json_404"
handler500 = "inspection.api.errors.json_500"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("projects/<int:pk>/", views.project_images, name="project"),
    path("projects/<int:pk>/settings/", views.project_settings, name="project-settings"),
    path("projects/<int:pk>/review/", views.review_page, name="review"),
    path("projects/<int:pk>/models/", views.models_page, name="models"),
    path("runs/<int:pk>/", views.run_page, name="run"),
    path("images/<int:pk>/", views.image_page, name="image-page"),
    path("jobs/", views.jobs_page, name="jobs"),
    path("jobs/<uuid:pk>/", views.job_page, name="job"),
    path("api/", include("inspection.api.urls")),
    path("admin/", admin.site.urls),
]

from annotations.views import datasets_page  # noqa: E402

urlpatterns += [path("projects/<int:pk>/datasets/", datasets_page, name="project-datasets")]
