"""Create the local demo login (user ``demo`` in team ``demo``) if missing and print it.

The password comes from EXPLORER_DEMO_PASSWORD, else a random one kept in var/demo_password.
"""
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from explorer.accounts.models import Membership, Team


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        username = os.environ.get("EXPLORER_DEMO_USER", "demo")
        password = os.environ.get("EXPLORER_DEMO_PASSWORD")
        pw_file = settings.VAR_DIR / "demo_password"
        if not password:
            if not pw_file.exists():
                pw_file.write_text(secrets.token_urlsafe(9))
                pw_file.chmod(0o600)
            password = pw_file.read_text().strip()
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if created or not user.check_password(password):
            user.set_password(password)
            user.save()
        team, _ = Team.objects.get_or_create(slug="demo", defaults={"name": "Demo team"})
        Membership.objects.get_or_create(user=user, team=team, defaults={"role": Membership.Role.ADMIN})
        self.stdout.write(f"Log in as '{username}' with password '{password}' (team '{team.name}').")
