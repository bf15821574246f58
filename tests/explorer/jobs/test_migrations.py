"""A database made by the one-app layout (``explorer`` migrations 0001-0006, every model in one
app), with users, teams, jobs and their events in it, migrates to the apps' layout with nothing
lost; the content types follow the models, so permissions given before still hold. Runs on
SQLite and PostgreSQL (``make test``'s second pass). A fresh database migrating from zero is
every other test's set-up."""
import datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

OLD_LEAF = ("explorer", "0006_queue_indexes")
NEW_APPS = ("accounts", "datasets", "jobs", "scheduling", "tokenizers")

pytestmark = pytest.mark.django_db(transaction=True)


def executor():
    e = MigrationExecutor(connection)
    e.loader.build_graph()
    return e


def make_old_database():
    """Migrate the test database back to the one-app layout (the domain apps' migrations only
    changed the state, so the tables are today's) and fill it through that layout's models."""
    e = executor()
    e.migrate([OLD_LEAF] + [(app, None) for app in NEW_APPS])
    old = executor().loader.project_state(OLD_LEAF).apps
    User, Permission = old.get_model("auth", "User"), old.get_model("auth", "Permission")
    Team, Membership = old.get_model("explorer", "Team"), old.get_model("explorer", "Membership")
    ApiToken, Dataset = old.get_model("explorer", "ApiToken"), old.get_model("explorer", "Dataset")
    Job, JobEvent = old.get_model("explorer", "Job"), old.get_model("explorer", "JobEvent")
    Tokenizer, Worker = old.get_model("explorer", "Tokenizer"), old.get_model("explorer", "Worker")

    ana = User.objects.create(username="ana", password="!")
    ben = User.objects.create(username="ben", password="!")
    team = Team.objects.create(name="Lab", slug="lab", max_running=2, gpu_hours_per_day=1.5)
    Membership.objects.create(user=ana, team=team, role="admin")
    Membership.objects.create(user=ben, team=team, role="member")
    ApiToken.objects.create(user=ana, team=team, name="ci", key_hash="a" * 64, hint="lae_abcdef")
    dataset = Dataset.objects.create(team=team, owner=ana, name="poems", file="datasets/team-1/x.txt",
                                     size_bytes=12, n_chars=12)
    spec = {"model": {"n_layer": 1}, "data": {"source": "text"}, "train": {"steps": 3}}
    parent = Job.objects.create(team=team, owner=ana, name="pretrain", spec=spec, dataset=dataset, status="succeeded",
                                step=3, total_steps=3, last_seq=3, summary={"loss": 1.25})
    child = Job.objects.create(team=team, owner=ben, kind="train", spec=spec, parent=parent, parent_step=3,
                               priority=0, queue_order=12.5, attempt=2, auto_retries=1, route="cpu.1g")
    for seq, kind in enumerate(("status", "step", "end"), start=1):
        JobEvent.objects.create(job=parent, seq=seq, kind=kind, payload={"seq": seq, "text": "ü"}, ts=1000.0 + seq)
    tok_job = Job.objects.create(team=team, owner=ana, kind="tokenizer", spec={"tokenizer": {"kind": "bpe"}})
    Tokenizer.objects.create(team=team, owner=ana, name="bpe-300", kind="bpe", settings={"vocab_size": 300},
                             vocab_size=300, status="training", job=tok_job, file="tokenizers/team-1/t.json")
    Worker.objects.create(name="cpu@box", queues=["cpu"], tiers=["cpu.1g"], memory_bytes=2**30, current_job=child)
    ben.user_permissions.add(Permission.objects.get(content_type__app_label="explorer", codename="view_job"))
    return {"parent": parent.pk, "child": child.pk, "tok_job": tok_job.pk, "team": team.pk}


def test_a_one_app_database_migrates_to_the_apps_with_nothing_lost():
    ids = make_old_database()
    e = executor()
    e.migrate(e.loader.graph.leaf_nodes())
    assert not executor().migration_plan(executor().loader.graph.leaf_nodes())  # at the leaves

    from django.contrib.auth import get_user_model
    from django.contrib.contenttypes.models import ContentType

    from explorer.accounts.models import ApiToken, Membership, Team
    from explorer.datasets.models import Dataset
    from explorer.jobs.models import Job, JobEvent
    from explorer.scheduling.models import Worker
    from explorer.tokenizers.models import Tokenizer

    ContentType.objects.clear_cache()
    team = Team.objects.get(pk=ids["team"])
    assert (team.name, team.slug, team.max_running, team.gpu_hours_per_day) == ("Lab", "lab", 2, 1.5)
    assert sorted(team.members.values_list("username", flat=True)) == ["ana", "ben"]
    assert Membership.objects.get(team=team, user__username="ana").role == "admin"
    assert ApiToken.objects.get(name="ci").team == team
    parent, child = Job.objects.get(pk=ids["parent"]), Job.objects.get(pk=ids["child"])
    assert (parent.name, parent.status, parent.step, parent.last_seq, parent.summary) == ("pretrain", "succeeded", 3, 3,
                                                                                         {"loss": 1.25})
    assert parent.dataset == Dataset.objects.get(name="poems") and parent.dataset.file.name == "datasets/team-1/x.txt"
    assert (child.parent, child.parent_step, child.priority, child.queue_order, child.attempt, child.auto_retries,
            child.route, child.owner.username) == (parent, 3, 0, 12.5, 2, 1, "cpu.1g", "ben")
    events = [e.as_message() for e in JobEvent.objects.filter(job=parent)]
    assert events == [{"seq": s, "kind": k, "ts": 1000.0 + s, "data": {"seq": s, "text": "ü"}}
                      for s, k in enumerate(("status", "step", "end"), start=1)]
    tokenizer = Tokenizer.objects.get(name="bpe-300")
    assert (tokenizer.job_id, tokenizer.settings, tokenizer.status) == (ids["tok_job"], {"vocab_size": 300}, "training")
    assert Worker.objects.get(name="cpu@box").current_job == child
    # the permission given on the one app's Job is one on the jobs app's Job
    assert get_user_model().objects.get(username="ben").has_perm("jobs.view_job")
    assert not ContentType.objects.filter(app_label="explorer").exists()
    # new rows go on from the old ones (PostgreSQL's sequences belong to the same tables)
    new = Job.objects.create(team=team, owner=parent.owner, spec={}, created_at=datetime.datetime.now(datetime.UTC))
    assert new.pk > max(ids["parent"], ids["child"], ids["tok_job"])
