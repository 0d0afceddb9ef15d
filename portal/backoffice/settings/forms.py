"""The forms of the settings area, and the rule editor they share (field, operator, value rows
combined with "all" or "any")."""

import json

from babel import Locale
from babel import UnknownLocaleError
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField
from wtforms import FieldList
from wtforms import Form
from wtforms import FormField
from wtforms import HiddenField
from wtforms import IntegerField
from wtforms import RadioField
from wtforms import SelectChoice
from wtforms import SelectField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms.validators import DataRequired
from wtforms.validators import InputRequired
from wtforms.validators import Length
from wtforms.validators import Optional

from portal import rules
from portal.backoffice import OfferedChoices
from portal.contacts import KINDS
from portal.contacts import OptIn
from portal.db import canonical_json
from portal.db import whole_number

STALE_FORM = _l("This form is incomplete. Reload the page and make your changes again.")
HALF_A_WORDING = _l("Give both a title and a text in this language, or neither.")
NAME_FIRST = _l("Give the name in this language too, or leave its description empty.")
NESTED_DAMAGED = _l(
    "The rule with nested groups came back from the form damaged, so nothing is saved. Open "
    "the form again to start from the saved rule, or replace it with conditions in the rows."
)


def language_name(language: str | None) -> str:
    """Return a language's name in the staff member's own language ("Deutsch" is "German")."""
    try:
        return Locale.parse(language).get_display_name(str(get_locale() or "en")) or language
    except (ValueError, TypeError, UnknownLocaleError):
        return language or ""


#: Blank rows offered under a rule's conditions, so one can be added without JavaScript.
BLANK_ROWS = 2

OPERATOR_LABELS = {
    "equals": _l("is"),
    "not_equals": _l("is not"),
    "in": _l("is one of (comma-separated)"),
    "contains": _l("contains"),
    "is_empty": _l("is empty"),
    "not_empty": _l("is not empty"),
}
POLICY_LABELS = {
    "double": _l("Double opt-in only (recommended)"),
    "double_single_user": _l("Double opt-in and Single opt-in (user)"),
    "double_single_user_single_webform": _l(
        "Double opt-in, Single opt-in (user) and Single opt-in (web form)"
    ),
}
SETTING_LABELS = {
    "page_enabled": _l("Page enabled"),
    "audience_rule": _l("Audience"),
    "notification_rule": _l("Who is notified"),
    "footer_html": _l("Email footer"),
    "policy_html": _l("Policy statement"),
    "policy_translations": _l("Policy statement in other languages"),
    "campaign_policy": _l("Campaign opt-in policy"),
}
KIND_LABELS = {
    "custom": _l("Custom (e.g. share my details with partners)"),
    "tracking": _l("Engagement tracking (opens, clicks, document views)"),
    "storage": _l("Storage of a sensitive field"),
}


def options(labels: dict) -> list[SelectChoice]:
    """Return {value: label} as WTForms choices."""
    return [SelectChoice(value, label) for value, label in labels.items()]


class ConditionForm(OfferedChoices, Form):
    # Choices are filled in per request; an unknown name gets the rule's own message.
    field = SelectField(_l("Field"), choices=[], validate_choice=False)
    op = SelectField(_l("Operator"), choices=options(OPERATOR_LABELS), validate_choice=False)
    value = StringField(_l("Value"), validators=[Optional(), Length(max=4000)])


class RuleForm(OfferedChoices, Form):
    combine = RadioField(
        _l("Combine the conditions"),
        default="all",
        choices=options({"all": _l("all of them hold"), "any": _l("any of them holds")}),
    )
    rows = FieldList(FormField(ConditionForm), max_entries=rules.MAX_CONDITIONS)
    # A saved rule with nested groups cannot be shown as rows: it travels here untouched.
    nested = HiddenField()


class EditNumberField(IntegerField):
    """The hidden number of the edit a form was based on, which tells a stale form.

    ASCII digits within the database's integer, else the form is stale: WTForms' own
    IntegerField takes "²" for a digit and NumberRange turns a number of 400 digits into a
    float, which overflows (a 500).
    """

    widget = HiddenField.widget

    def __init__(self, **kwargs):
        super().__init__(default=0, validators=[InputRequired(STALE_FORM)], **kwargs)

    def process_formdata(self, valuelist):
        if valuelist:
            self.data = whole_number(valuelist[0])
            if self.data is None:
                raise ValueError(STALE_FORM)


class PolicyWordingForm(Form):
    """The policy statement in one of the page's languages; empty means the default."""

    language = HiddenField()
    html = TextAreaField(_l("Policy statement"), validators=[Length(max=50000)])


class SettingsForm(OfferedChoices, FlaskForm):
    based_on = EditNumberField()
    page_enabled = BooleanField(_l("Contacts can use the preference page"))
    audience = FormField(RuleForm, label=_l("Who may use the page (audience)"))
    notification = FormField(RuleForm, label=_l("Who is told of access and of new consents"))
    footer_html = TextAreaField(_l("Email footer"), validators=[Length(max=20000)])
    policy_html = TextAreaField(_l("Policy statement"), validators=[Length(max=50000)])
    policy_wordings = FieldList(FormField(PolicyWordingForm))
    campaign_policy = RadioField(
        _l("Campaigns may be sent to contacts with the status"),
        choices=options(POLICY_LABELS),
        default="double",
    )
    note = StringField(_l("Note for the history (optional)"), validators=[Length(max=200)])


class WordingForm(Form):
    """A consent's wording in one of the page's languages; both empty means none."""

    language = HiddenField()
    title = StringField(_l("Title"), validators=[Optional(), Length(max=200)])
    text = TextAreaField(_l("Text the contact reads"), validators=[Optional(), Length(max=10000)])


class ListWordingForm(Form):
    """A mailing list's name and description in one of the page's languages."""

    language = HiddenField()
    name = StringField(_l("Name"), validators=[Optional(), Length(max=120)])
    description = TextAreaField(_l("Description"), validators=[Optional(), Length(max=2000)])


class InLanguages:
    """A form offering its texts once more in each language of the page: the rows of its
    `wordings` field list, two texts each (`PARTS`), the first needed wherever the second is
    given (and, with `BOTH`, the second wherever the first is)."""

    PARTS: tuple[str, str]
    BOTH = False

    @staticmethod
    def part_label(part: str, language: str):
        raise NotImplementedError

    def prepare_wordings(self, languages: list[str], current: dict | None = None) -> None:
        """Offer one row per language of the page, filled from `current` ({language: {part:
        text}}) on a form not yet posted, and label each with its language."""
        if not self.is_submitted():
            while self.wordings.entries:
                self.wordings.pop_entry()
            for language in languages:
                found = (current or {}).get(language, {})
                self.wordings.append_entry(
                    {"language": language, **{part: found.get(part, "") for part in self.PARTS}}
                )
        for entry in self.wordings:
            name = language_name(entry.form.language.data)
            for part in self.PARTS:
                entry.form[part].label.text = self.part_label(part, name)

    def wordings_for(
        self, languages: list[str], current: dict | None = None
    ) -> dict[str, tuple[str, str]] | None:
        """Return the posted texts of each language ({language: (first, second)}), or None,
        with the form told why: a row half given, or some languages missing (a form from
        before a language was added, or one made up). A form with no rows at all (from
        before texts per language) keeps the `current` ones."""
        first, second = self.PARTS
        posted = {entry.form.language.data: (entry.form[first].data or "",
                                              entry.form[second].data or "")
                  for entry in self.wordings}
        if not posted:
            return {language: (texts[first], texts[second])
                    for language, texts in (current or {}).items()}
        if set(posted) != set(languages):
            self[first].errors = [*self[first].errors, STALE_FORM]
            return None
        complete = True
        for entry in self.wordings:
            given = [bool((entry.form[part].data or "").strip()) for part in self.PARTS]
            if given[1] and not given[0]:
                missing = entry.form[first]
            elif self.BOTH and given[0] and not given[1]:
                missing = entry.form[second]
            else:
                continue
            missing.errors = [*missing.errors, HALF_A_WORDING if self.BOTH else NAME_FIRST]
            complete = False
        return posted if complete else None


class ConsentForm(InLanguages, OfferedChoices, FlaskForm):
    PARTS = ("title", "text")
    BOTH = True

    title = StringField(_l("Title"), validators=[DataRequired(), Length(max=200)])
    text = TextAreaField(
        _l("Text the contact reads"), validators=[DataRequired(), Length(max=10000)]
    )
    wordings = FieldList(FormField(WordingForm))
    condition = FormField(RuleForm, label=_l("Who is asked (display condition)"))
    default_selected = BooleanField(_l("Pre-position the answer on “Yes”"))

    @staticmethod
    def part_label(part: str, language: str):
        if part == "title":
            return _l("Title in %(language)s", language=language)
        return _l("Text in %(language)s", language=language)


class NewConsentForm(ConsentForm):
    kind = SelectField(_l("Kind"), choices=options(KIND_LABELS), default="custom")
    field = SelectField(
        _l("Sensitive field (for a storage consent)"), choices=[], validate_choice=False
    )


class EditConsentForm(ConsentForm):
    based_on = EditNumberField()
    material = BooleanField(
        _l("Material change: ask again everyone who accepted an earlier wording")
    )


class RetireForm(FlaskForm):
    pass


class ListForm(InLanguages, FlaskForm):
    PARTS = ("name", "description")

    based_on = EditNumberField()
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=120)])
    description = TextAreaField(_l("Description"), validators=[Length(max=2000)])
    wordings = FieldList(FormField(ListWordingForm))
    public = BooleanField(_l("Public: offered on every contact's page"), default=True)

    @staticmethod
    def part_label(part: str, language: str):
        if part == "name":
            return _l("Name in %(language)s", language=language)
        return _l("Description in %(language)s", language=language)


class PreviewForm(OfferedChoices, FlaskForm):
    class Meta:
        csrf = False  # a GET form that changes nothing

    contact = StringField(
        _l("Contact (email address or public id)"), validators=[Optional(), Length(max=254)]
    )
    first_name = StringField(_l("First name"), validators=[Optional(), Length(max=100)])
    region = StringField(_l("Region"), validators=[Optional(), Length(max=40)])
    language = StringField(_l("Language"), validators=[Optional(), Length(max=10)])
    kind = SelectField(_l("Kind"), choices=options({kind: kind for kind in KINDS}), default="lead")
    opt_in_status = SelectField(
        _l("Email opt-in status"),
        choices=options({status.value: status.value for status in OptIn}),
        default=OptIn.NONE.value,
    )


def rule_data(rule: dict | None) -> dict:
    """Return a saved rule as the rule editor's data (rows, or the nested rule as it is)."""
    conditions = [rule] if rule and "field" in rule else next(iter((rule or {}).values()), [])
    if any("field" not in condition for condition in conditions):
        return {"combine": "all", "rows": [], "nested": canonical_json(rule)}
    rows = [
        {
            "field": c["field"],
            "op": c["op"],
            "value": ", ".join(c["value"])
            if isinstance(c.get("value"), list)
            else c.get("value", ""),
        }
        for c in conditions
    ]
    return {"combine": "any" if rule and "any" in rule else "all", "rows": rows, "nested": ""}


def prepare_rule(form: RuleForm, field_names: list[str]) -> None:
    """Fill the field choices of every row and add the blank rows."""
    while (
        len(form.rows) < rules.MAX_CONDITIONS
        and sum(1 for row in form.rows if not row.form.field.data) < BLANK_ROWS
    ):
        form.rows.append_entry()
    for row in form.rows:
        row.form.field.choices = options({"": "—", **{name: name for name in field_names}})


def rule_from(form: RuleForm) -> tuple[dict | None, bool]:
    """Return the rule the editor describes and whether it is valid; each bad row gets its
    message next to it."""
    conditions, valid = [], True
    for row in (entry.form for entry in form.rows):
        if not row.field.data:
            continue
        condition = {"field": row.field.data, "op": row.op.data}
        text = (row.value.data or "").strip()
        if row.op.data == "in":
            condition["value"] = [item.strip() for item in text.split(",") if item.strip()]
        elif row.op.data not in ("is_empty", "not_empty"):
            condition["value"] = text
        try:
            conditions.append(rules.validate(condition))
        except rules.RuleError as error:
            row.value.errors = [str(error)]
            valid = False
    if not conditions and form.nested.data:
        return _nested_rule(form), valid and not form.nested.errors
    if not valid or not conditions:
        return None, valid
    rule = conditions[0] if len(conditions) == 1 else {form.combine.data or "all": conditions}
    try:
        return rules.validate(rule), True
    except rules.RuleError as error:
        form.combine.errors = [str(error)]
        return None, False


def _nested_rule(form: RuleForm) -> dict | None:
    """Return the rule the editor's hidden nested rule holds, or None with the reason beside it.

    Only a damaged or made-up form sends anything but the JSON object the editor was given, and
    json's own messages ("Expecting value: line 1 column 1 (char 0)") are no help to staff.
    """
    try:
        rule = json.loads(form.nested.data)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        rule = None
    if not isinstance(rule, dict):
        form.nested.errors = [NESTED_DAMAGED]
        return None
    try:
        return rules.validate(rule)
    except rules.RuleError as error:
        form.nested.errors = [
            _l(
                "The rule with nested groups cannot be used: %(reason)s. Replace it with "
                "conditions in the rows.",
                reason=str(error),
            )
        ]
        return None


def describe_rule(rule: dict | None) -> str:
    """Return a rule as a short sentence for tables and the history."""
    if rule is None:
        return str(_l("everyone"))
    if "field" in rule:
        value = rule.get("value")
        shown = ", ".join(value) if isinstance(value, list) else (value or "")
        label = _l("is one of") if rule["op"] == "in" else OPERATOR_LABELS.get(rule["op"], "")
        return f"{rule['field']} {label} {shown}".strip()
    key, members = next(iter(rule.items()))
    joiner = f" {_l('and') if key == 'all' else _l('or')} "
    return "(" + joiner.join(describe_rule(member) for member in members) + ")"


def show_setting(name: str, value) -> str:
    """Return a setting's value as text for the history and the "what changed" message."""
    if name.endswith("_rule") or name == "display_condition":
        return describe_rule(value)
    if isinstance(value, bool):
        return str(_l("yes") if value else _l("no"))
    if name == "campaign_policy":
        return str(POLICY_LABELS.get(value, value))
    if name == "policy_translations":
        value = "; ".join(f"{language}: {html}" for language, html in sorted((value or {}).items()))
    text = str(value or "")
    return text if len(text) <= 160 else text[:160] + "…"
