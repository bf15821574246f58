"""Uploading a dataset."""
from django import forms


class DatasetUploadForm(forms.Form):
    name = forms.CharField(required=False, max_length=200, widget=forms.TextInput(attrs={"placeholder": "defaults to the file name"}))
    file = forms.FileField(help_text="A UTF-8 text file.")
