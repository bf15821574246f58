from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from config.api import api
from explorer import views
from explorer.accounts import ratelimit

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", ratelimit.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("compose/", views.compose, name="compose"),
    path("compare/", views.compare, name="compare"),
    path("queue/", views.queue, name="queue"),
    path("workers/", views.workers, name="workers"),
    path("runs/", views.runs, name="runs"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:job_id>/retry/", views.job_retry, name="job_retry"),
    path("datasets/", views.datasets, name="datasets"),
    path("tokenizers/", views.tokenizers, name="tokenizers"),
    path("inference/", views.inference, name="inference"),
    path("account/", views.account, name="account"),
    path("account/tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("teams/switch/", views.switch_team, name="switch_team"),
    path("team/", views.team, name="team"),
    path("api/v1/", api.urls),
    path("admin/", admin.site.urls),
]
