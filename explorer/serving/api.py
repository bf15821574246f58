"""The Serving page's endpoint: the live figures of every serving process."""
from ninja import Router

from explorer.serving import live

serving = Router(tags=["serving"])


@serving.get("/serving", summary="Served models, live: batch, KV blocks, queue, tokens/s, TTFT and TPOT, 429s")
def serving_status(request):
    """One entry per model a serving process is up for (its last heartbeat, under a second old);
    ``endpoint``: where the OpenAI-compatible API answers."""
    return {"endpoint": request.build_absolute_uri("/v1"), "models": live.served_models(request.user)}
