"""``make run``: the whole app as one foreground command.

Starts (or uses) Redis, migrates the database, makes sure a demo login exists, then runs the ASGI
server, a ``cpu`` Celery worker, a ``gpu`` worker when torch sees a GPU, a serving process per
model of ``EXPLORER_SERVE`` (SmolLM2 by default: the OpenAI-compatible endpoint at /v1) and
Celery beat (the stale-job reaper). Ctrl-C stops them all; if one dies, the rest are stopped too. For a real
deployment run each process on its own (see docker-compose.yml).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
MAX_SERVING_RESTARTS = 5


def wait_for_port(host, port, procs, timeout=120):
    """Print the address only once the server answers, so the first click works."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            raise SystemExit(f"{', '.join(dead)} exited during start-up")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the web server did not listen on {host}:{port} within {timeout}s")


def serving_models(env):
    """The models to serve (``EXPLORER_SERVE``: comma-separated registry names, "none" for none;
    SmolLM2 by default), leaving out, with a line saying why, one that cannot load here."""
    from engine.interop.pretrained import available
    from engine.tokenlab import SMOLLM2_NAME

    wanted = [m.strip() for m in env.get("EXPLORER_SERVE", SMOLLM2_NAME).split(",") if m.strip()]
    served = []
    for model in wanted if wanted != ["none"] else []:
        try:
            why = available(model)
        except ValueError as exc:
            why = str(exc)
        if why:
            print(f"• not serving {model}: {why}", flush=True)
        else:
            served.append(model)
    return served


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("EXPLORER_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("EXPLORER_PORT", "8000")))
    args = parser.parse_args(argv)

    var_dir = Path(os.environ.get("EXPLORER_VAR_DIR", BASE_DIR / "var"))
    var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.local", PYTHONUNBUFFERED="1")
    # the serving load test's worker reaches this server's OpenAI-compatible endpoint
    env.setdefault("EXPLORER_SERVING_ENDPOINT", f"http://{args.host}:{args.port}/v1")
    redis = None
    if not env.get("REDIS_URL"):
        from explorer.embedded_redis import EmbeddedRedis

        redis = EmbeddedRedis(var_dir)
        env["REDIS_URL"] = redis.start()
        print(f"• embedded Redis on {env['REDIS_URL']}", flush=True)
    else:
        print(f"• Redis at {env['REDIS_URL']}", flush=True)

    py = sys.executable
    procs = {}
    try:
        subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=BASE_DIR, env=env, check=True)
        login = subprocess.run([py, "manage.py", "ensure_demo_user"], cwd=BASE_DIR, env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        has_gpu = subprocess.run([py, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
                                 env=env).returncode == 0
        celery = [py, "-m", "celery", "-A", "config.celery_app"]
        commands = {
            "web": [py, "-m", "uvicorn", "config.asgi:application", "--host", args.host, "--port", str(args.port),
                    "--log-level", "warning"],
            "worker-cpu": celery + ["worker", "-Q", "cpu", "-c", "1", "-n", "cpu@%h", "-l", "info"],
            "beat": celery + ["beat", "-l", "warning", "-s", str(var_dir / "celerybeat-schedule")],
        }
        if has_gpu:
            commands["worker-gpu"] = celery + ["worker", "-Q", "gpu", "-c", "1", "-n", "gpu@%h", "-l", "info"]
        served = serving_models(env)
        for model in served:
            commands[f"serving-{model}"] = [py, "manage.py", "serve", model]
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(cmd, cwd=BASE_DIR, env=env, start_new_session=True)
        wait_for_port(args.host, args.port, {n: p for n, p in procs.items() if not n.startswith("serving-")})
        url = f"http://{args.host}:{args.port}"
        print(f"\n  LLM Architecture Explorer is running at {url}\n  {login}\n"
              f"  Workers: cpu{' + gpu' if has_gpu else ''}.  Serving: {', '.join(served) or 'nothing'}"
              f"{f' (OpenAI-compatible API at {url}/v1)' if served else ''}.  Press Ctrl-C to stop everything.\n",
              flush=True)
        stopping = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.append(True))
        restarts = {}
        while not stopping:
            for name in [n for n, p in procs.items() if n.startswith("serving-") and p.poll() is not None]:
                # a serving process is restarted (a few times), not a reason to stop the app
                restarts[name] = restarts.get(name, 0) + 1
                if restarts[name] > MAX_SERVING_RESTARTS:
                    print(f"• {name} exited (code {procs[name].returncode}) again; not restarting it", flush=True)
                    del procs[name]
                    continue
                print(f"• {name} exited (code {procs[name].returncode}); restarting it", flush=True)
                procs[name] = subprocess.Popen(commands[name], cwd=BASE_DIR, env=env, start_new_session=True)
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                print(f"• {', '.join(dead)} exited (code {procs[dead[0]].returncode}); stopping the rest", flush=True)
                return 1
            time.sleep(0.5)
        print("\n• stopping…", flush=True)
        return 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if redis:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
