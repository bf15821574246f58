"""Shared fixtures: two teams with one user each, and a tiny job spec the real engine trains fast."""
import pytest

TINY_SPEC = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
    "data": {"source": "synthetic", "task": "copy", "task_length": 4},
    "train": {"steps": 30, "batch_size": 8, "eval_interval": 10, "eval_iters": 2, "warmup_steps": 3, "sample_tokens": 8},
}


@pytest.fixture
def tiny_spec():
    import copy

    return copy.deepcopy(TINY_SPEC)


def make_user(name):
    from django.contrib.auth import get_user_model

    from explorer.accounts.teams import create_personal_team

    user = get_user_model().objects.create_user(name, password="pw-" + name + "-123")
    return user, create_personal_team(user)


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice[0])
    return client


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    from config.celery_app import app

    with django_db_blocker.unblock():
        app.control.purge()  # messages left by earlier tests or runs on this Redis database
        from tests.stack import Stack

        s = Stack(tmp_path_factory.mktemp("stack"))
        try:
            s.start_web()
            s.start_worker()
            yield s
        finally:
            s.stop()


@pytest.fixture
def session_cookie():
    from django.conf import settings
    from django.test import Client

    def make(user):
        c = Client()
        c.force_login(user)
        return f"{settings.SESSION_COOKIE_NAME}={c.cookies[settings.SESSION_COOKIE_NAME].value}"

    return make


@pytest.fixture(scope="session")
def smollm2_models_dir(tmp_path_factory):
    """A models directory ($ENGINE_MODELS_DIR) for the session's SmolLM2 loads, so the GGUF file is
    converted at most once a session: $ENGINE_MODELS_DIR as the caller set it (an existing copy is
    reused and kept), else a temporary one, removed afterwards (the model's copy is 540 MB)."""
    import os
    import shutil

    from engine.tokenlab import MODELS_DIR_ENV

    given = os.environ.get(MODELS_DIR_ENV)
    directory = given or str(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODELS_DIR_ENV, directory)
        yield directory
    if not given:
        shutil.rmtree(directory, ignore_errors=True)
