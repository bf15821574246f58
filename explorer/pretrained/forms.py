"""Uploading a model."""
from django import forms


class ModelUploadForm(forms.Form):
    name = forms.CharField(required=False, max_length=200,
                           widget=forms.TextInput(attrs={"placeholder": "defaults to the file name"}))
    file = forms.FileField(help_text="A .gguf file, or a transformers model directory (config.json, *.safetensors, "
                                     "tokenizer.json) as a .zip.",
                           widget=forms.ClearableFileInput(attrs={"accept": ".gguf,.zip"}))
