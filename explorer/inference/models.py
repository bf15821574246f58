"""Chat conversations with a chat model (SmolLM2-135M-Instruct): each user's own, never shown to
anyone else. A conversation is its messages in order; each assistant message is written by one
job of the "chat" kind (``explorer.inference.chat``), which fills it in on the worker."""
from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # the pretrained chat model it talks to (a key of ``explorer.inference.jobs.PRETRAINED``)
    model = models.CharField(max_length=60, default="smollm2-135m-instruct")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self):
        return f"conversation {self.pk} of {self.owner_id}"

    @property
    def display_title(self):
        return self.title or f"Conversation #{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    # an assistant's answer: its tokens as the engine gave them ({"id", "text", "prob", "alternatives"})
    tokens = models.JSONField(default=list, blank=True)
    # an assistant's answer: the sampling settings, why it stopped, its measurements
    settings = models.JSONField(default=dict, blank=True)
    stopped_by = models.CharField(max_length=20, blank=True)
    n_prompt_tokens = models.PositiveIntegerField(default=0)
    # the chat job that writes an assistant's answer (kept when the job row goes: the text stays)
    job = models.OneToOneField("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="chat_message")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "pk"]

    def __str__(self):
        return f"{self.role} message {self.pk}"
