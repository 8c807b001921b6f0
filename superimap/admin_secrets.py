"""Admin forms for encrypted fields (write-only, shown as "- encrypted -", never echoed back),
checked by the rules of superimap/accounts (the API's) once the form's values are on the
instance."""

from __future__ import annotations

from django import forms
from django.db import models

ENCRYPTED_PLACEHOLDER = "- encrypted -"


class SecretInput(forms.PasswordInput):
    def __init__(self, attrs=None):
        super().__init__(
            attrs={"autocomplete": "new-password", **(attrs or {})}, render_value=False
        )

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        if value:
            context["widget"]["attrs"]["placeholder"] = ENCRYPTED_PLACEHOLDER
        return context


def _formfield(db_field, **kwargs):
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")  # Django 6's default already
    return db_field.formfield(**kwargs)


def secret_form(model, secret_fields: tuple[str, ...]):
    """A ModelForm class whose secret fields keep their stored value when left empty."""

    class SecretForm(forms.ModelForm):
        class Meta:
            fields = "__all__"
            widgets = {name: SecretInput() for name in secret_fields}
            formfield_callback = _formfield

        def clean(self):
            cleaned = super().clean()
            for name in secret_fields:
                if name in cleaned and not cleaned[name] and self.instance.pk:
                    cleaned[name] = getattr(self.instance, name)
            return cleaned

    SecretForm.Meta.model = model
    SecretForm.__name__ = f"{model.__name__}SecretForm"
    return SecretForm


def show_problems(form: forms.ModelForm, problems) -> None:
    """Each accounts.checks.Problem as a form error, on its field when the form has it."""
    for problem in problems:
        field = problem.field if problem.field in form.fields else None
        form.add_error(field, problem.shown_on_form)
