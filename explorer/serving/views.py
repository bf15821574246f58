from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from explorer.serving import live
from explorer.serving.api import loadtest_options


@login_required
def serving_page(request):
    """The serving processes, live (static/js/serving.js polls /api/v1/serving every second)."""
    return render(request, "explorer/serving.html", {
        "nav": "serving", "loadtest": loadtest_options(),
        "initial": {"endpoint": request.build_absolute_uri("/v1"), "models": live.served_models(request.user)},
    })
