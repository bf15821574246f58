from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config.api import api
from explorer.accounts import ratelimit
from explorer.accounts import views as accounts
from explorer.datasets import views as datasets
from explorer.inference import views as inference
from explorer.jobs import views as jobs
from explorer.pretrained import views as pretrained
from explorer.scheduling import views as scheduling
from explorer.serving import openai_api
from explorer.serving import views as serving
from explorer.tokenizers import views as tokenizers
from explorer.training import views as training

urlpatterns = [
    path("", accounts.home, name="home"),
    path("login/", ratelimit.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", accounts.signup, name="signup"),
    path("compose/", training.compose, name="compose"),
    path("compare/", training.compare, name="compare"),
    path("queue/", jobs.queue, name="queue"),
    path("workers/", scheduling.workers, name="workers"),
    path("runs/", training.runs, name="runs"),
    path("jobs/<int:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<int:job_id>/cancel/", jobs.job_cancel, name="job_cancel"),
    path("jobs/<int:job_id>/retry/", training.job_retry, name="job_retry"),
    path("datasets/", datasets.datasets, name="datasets"),
    path("tokenizers/", tokenizers.tokenizers, name="tokenizers"),
    path("inference/", inference.inference, name="inference"),
    path("chat/", inference.chat, name="chat"),
    path("chat/<int:conversation_id>/", inference.chat, name="chat_conversation"),
    path("attention/", inference.attention, name="attention"),
    path("models/", pretrained.models_page, name="models"),
    path("models/<int:model_id>/delete/", pretrained.model_delete, name="model_delete"),
    path("finetune/", training.finetune, name="finetune"),
    path("serving/", serving.serving_page, name="serving"),
    path("account/", accounts.account, name="account"),
    path("account/tokens/<int:token_id>/revoke/", accounts.token_revoke, name="token_revoke"),
    path("teams/switch/", accounts.switch_team, name="switch_team"),
    path("team/", scheduling.team, name="team"),
    path("api/v1/", api.urls),
    # the OpenAI-compatible endpoint: OpenAI(base_url="http://host/v1", api_key=<an API token>)
    path("v1/", include((openai_api.urlpatterns, "openai"))),
    path("admin/", admin.site.urls),
]
