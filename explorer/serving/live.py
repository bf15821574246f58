"""The served models' live figures, as the Serving page and ``GET /api/v1/serving`` show them:
each serving process's last heartbeat (``bus.alive``) and the web's recent 429s for it."""
import time

from explorer.serving import bus


def served_models(user):
    """Every model a serving process is up for, by name: its figures (batch, KV blocks, queue,
    tokens/s, latencies of its last finished requests) and ``refusals``: how many requests the
    web refused with 429 in the last minute, and when (epoch seconds, newest first). A team's
    checkpoint shows only to its members."""
    from explorer.accounts.teams import user_teams

    teams = {t.pk for t in user_teams(user)}
    client = bus.sync_client()
    keys = sorted(client.scan_iter(match=bus.alive_pattern(), count=100))
    out = []
    now = time.time()
    for raw in client.mget(keys) if keys else []:
        if not raw:
            continue
        figures = bus.unpack(raw)
        if figures.get("team") is not None and figures["team"] not in teams:
            continue
        times = [float(t) for t in client.lrange(bus.refusals(figures["model"]), 0, 199)]
        figures["refusals"] = {"last_minute": sum(1 for t in times if t > now - 60), "recent": times}
        out.append(figures)
    return out
