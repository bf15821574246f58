from django.urls import path

from explorer.jobs import consumers

websocket_urlpatterns = [
    path("ws/jobs/<int:job_id>/", consumers.JobConsumer.as_asgi()),
    path("ws/teams/<int:team_id>/", consumers.TeamConsumer.as_asgi()),
]
