"""Teams, their members and roles, and personal API tokens."""
import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class Team(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    created_at = models.DateTimeField(auto_now_add=True)

    # Quotas, set by the team's admins; empty = no limit (explorer.jobs.queue). The running limits
    # hold jobs in the queue; the others refuse a submission with a message.
    max_running = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs of the team running at once")
    max_running_per_user = models.PositiveIntegerField(null=True, blank=True, help_text="Jobs of one member running at once")
    max_active_per_user = models.PositiveIntegerField(null=True, blank=True,
                                                      help_text="Jobs of one member queued or running (more are refused)")
    gpu_hours_per_day = models.FloatField(null=True, blank=True, help_text="GPU-hours the team may use in 24 h")
    gpu_hours_per_day_per_user = models.FloatField(null=True, blank=True, help_text="GPU-hours one member may use in 24 h")

    class Meta:
        db_table = "explorer_team"  # the table it had in the one-app layout

    def __str__(self):
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member"
        MAINTAINER = "maintainer"
        ADMIN = "admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        db_table = "explorer_membership"  # the table it had in the one-app layout
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="unique_membership")]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"


class ApiToken(models.Model):
    """A personal API token. Only its SHA-256 is stored; the token is shown once at creation."""

    PREFIX = "lae_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    # the one team the token acts in (its jobs, datasets, tokenizers); None: all the user's teams
    # (tokens made before tokens were scoped)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=12, help_text="First characters, to recognise the token")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "explorer_apitoken"  # the table it had in the one-app layout
        ordering = ["-created_at"]

    @staticmethod
    def hash(raw):
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name, team=None):
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, team=team, name=name, key_hash=cls.hash(raw), hint=raw[:10])
        return token, raw

    @classmethod
    def authenticate(cls, raw):
        """The token's user, with ``token_team_id`` set when the token is scoped to a team
        (``explorer.accounts.teams`` then shows that team only); None for an unknown or revoked token,
        or one whose user has left its team."""
        token = cls.objects.select_related("user").filter(key_hash=cls.hash(raw), revoked_at=None).first()
        if token is None or not token.user.is_active:
            return None
        if token.team_id is not None and not Membership.objects.filter(user=token.user, team_id=token.team_id).exists():
            return None
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        user = token.user
        user.token_team_id = token.team_id
        return user
