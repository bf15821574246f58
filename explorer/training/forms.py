"""The composer form, generated from the engine's field specs (no hand-written option lists)."""
import json

from django import forms

import engine
from explorer.datasets.models import Dataset
from explorer.jobs import services
from explorer.tokenizers import lab as tokenizers
from explorer.training import checkpoints
from explorer.training import jobs as training_jobs

SECTIONS = [
    ("model", "Architecture", "The transformer: depth, width, attention heads, context."),
    ("data", "Data", "What it learns from, and how text becomes tokens."),
    ("train", "Training", "Optimiser, schedule, evaluation and device."),
]


def _field_for(spec):
    # Not required: a field left out takes the engine's default, as in the API.
    attrs = {"data-field": spec["name"], "data-type": spec["type"]}
    if spec.get("show_if"):
        # Which other field values make this one relevant; the composer hides it otherwise.
        attrs["data-show-if"] = json.dumps(spec["show_if"])
    kw = {"label": spec["label"], "help_text": spec.get("help", ""), "initial": spec.get("default")}
    kind = spec["type"]
    if kind in ("int", "float"):
        # Bounds go to the browser as hints only; the engine's messages are the ones users read.
        for key in ("min", "max"):
            if spec.get(key) is not None:
                attrs[key] = spec[key]
        attrs["step"] = spec.get("step") or (1 if kind == "int" else "any")
        if spec.get("default") is None:
            attrs["placeholder"] = "auto"  # empty means "derived": n_kv_head = n_head, ffn_hidden from ffn_mult...
        field_cls = forms.IntegerField if kind == "int" else forms.FloatField
        return field_cls(required=False, widget=forms.NumberInput(attrs=attrs), **kw)
    if kind == "bool":
        return forms.BooleanField(required=False, widget=forms.CheckboxInput(attrs=attrs), **kw)
    if kind == "choice":
        return forms.ChoiceField(required=False, choices=[(c, c) for c in spec["choices"]], widget=forms.Select(attrs=attrs), **kw)
    return forms.CharField(required=False, widget=forms.TextInput(attrs=attrs), **kw)


class ComposeForm(forms.Form):
    name = forms.CharField(required=False, max_length=200, label="Job name",
                           widget=forms.TextInput(attrs={"placeholder": "optional, e.g. copy-task 2 layers"}))
    priority = forms.ChoiceField(
        required=False, initial="normal", label="Priority",
        choices=[("low", "low"), ("normal", "normal"), ("high", "high (maintainers)")],
        help_text="Queued jobs run by priority, then fair share between members, then submission order.")

    def __init__(self, team, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.team = team
        self.specs = engine.field_specs()
        for spec in self.specs:
            if spec["name"] == "train.steps":
                # Another job's latest checkpoint by id; the server turns it into the engine's init_from path.
                self.fields["train.init_from_job"] = forms.ChoiceField(
                    label="Start from", required=False,
                    choices=[("", "— new weights (random initialisation)")] + checkpoints.init_choices(team),
                    help_text="Fine-tune: start from another job's latest checkpoint (pretrain → SFT → DPO). "
                              "The architecture must be that job's; its page's 'Fine-tune from this' sets it.",
                    widget=forms.Select(attrs={"data-field": "train.init_from_job", "data-type": "choice"}),
                )
            self.fields[spec["name"]] = _field_for(spec)
            if spec["name"] == "data.source":
                self.fields["data.dataset"] = forms.ChoiceField(
                    label="Uploaded file", required=False,
                    choices=[("", "—")] + [(str(d.pk), d.name) for d in Dataset.objects.filter(team=team)],
                    help_text="Used when the source is 'text' (any UTF-8 text) or 'jsonl' (SFT or DPO "
                              "examples, one JSON object per line). Upload files on the Datasets page.",
                    widget=forms.Select(attrs={"data-field": "data.dataset", "data-type": "choice"}),
                )
            if spec["name"] == "data.tokenizer" and "file" in (spec.get("choices") or []):
                # A lab tokenizer by id; the server turns it into the file's path (users never type paths).
                self.fields["data.tokenizer_id"] = forms.ChoiceField(
                    label="Lab tokenizer", required=False,
                    choices=[("", "—")] + tokenizers.ready_choices(team),
                    help_text="Used when the tokenizer is 'file'. Train or import one on the Tokenizers page.",
                    widget=forms.Select(attrs={"data-field": "data.tokenizer_id", "data-type": "choice",
                                               "data-show-if": json.dumps({"data.tokenizer": ["file"]})}),
                )
        # Shareable links carry booleans as text: "?model.bias=false" must render unchecked.
        for name, field in self.fields.items():
            if isinstance(field, forms.BooleanField) and isinstance(self.initial.get(name), str):
                self.initial[name] = self.initial[name].strip().lower() not in ("", "0", "false", "off", "no")
        self.spec = self.dataset = None

    def sections(self):
        """The form's cards, each split into the engine's field groups (in field order)."""
        group_of = {spec["name"]: spec.get("group") or "" for spec in self.specs}
        out = []
        for key, title, blurb in SECTIONS:
            fields = [self[name] for name in self.fields if name.startswith(key + ".")]
            groups = []
            for field in fields:
                group = group_of.get(field.name, "")
                if not groups or groups[-1]["title"] != group:
                    groups.append({"title": group, "fields": []})
                groups[-1]["fields"].append(field)
            out.append({"key": key, "title": title, "blurb": blurb, "fields": fields, "groups": groups})
        return out

    def payload(self):
        payload = {"model": {}, "data": {}, "train": {}}
        for name, value in self.cleaned_data.items():
            section, _, key = name.partition(".")
            if section in payload and value is not None and value != "":
                payload[section][key] = value
        return payload

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.spec, self.dataset, _ = training_jobs.validate_spec(self.team, self.payload())
        except services.SpecError as exc:
            for key, message in exc.errors.items():
                self.add_error(key if key in self.fields else None, message if key in self.fields else f"{key}: {message}")
        return cleaned
