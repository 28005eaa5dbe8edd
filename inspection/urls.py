"""The project URLconf: the core's pages and API, and the labeling side's, included by name
(the apps' dependency runs annotations -> inspection; this file only wires routes)."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from inspection import account_views, views

handler404 = "inspection.api.errors.json_404"
handler500 = "inspection.api.errors.json_500"

urlpatterns = [
    path("", views.home, name="home"),
    # browsers ask for /favicon.ico whatever the page says
    path("favicon.ico", RedirectView.as_view(url=static("loupe/favicon.svg"), permanent=True)),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("users/", account_views.users_page, name="users"),
    path("account/", account_views.account_page, name="account"),
    path(
        "account/set-password/<uidb64>/<token>/",
        account_views.PasswordSetView.as_view(),
        name="password-set",
    ),
    path("projects/<int:pk>/models/", views.models_page, name="models"),
    path("projects/<int:pk>/models/compare/", views.models_compare, name="models-compare"),
    path("projects/<int:pk>/regions/", views.regions_page, name="regions"),
    path("projects/<int:pk>/stations/", views.stations_page, name="stations"),
    path("stations/<int:pk>/", views.station_page, name="station"),
    path("jobs/", views.jobs_page, name="jobs"),
    path("jobs/<uuid:pk>/", views.job_page, name="job"),
    path("", include("annotations.urls")),
    path("api/", include("inspection.api.urls")),
    path("api/", include("annotations.api.urls")),
    path("admin/", admin.site.urls),
]
