"""The demo data set: an admin, a few dozen contacts with histories, lists and consents.

Loading is idempotent: every piece is looked up by its natural key first, so running the
command twice changes nothing the second time.
"""

import json
import random
import secrets
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from flask_babel import lazy_gettext

from portal import campaigns
from portal import consent
from portal import contact_records
from portal import contacts
from portal import link_requests
from portal import lists
from portal import optin
from portal import settings
from portal import staff
from portal.choices import page_for
from portal.contacts import OptIn
from portal.db import db
from portal.ledger import Evidence
from portal.links import manage_url

ADMIN_EMAIL = "admin@demo.example"
SEED = 2026

LISTS = (
    ("newsletter", "Monthly newsletter", "News and stories, once a month.", True),
    ("product-updates", "Product updates", "New features and changes to what you use.", True),
    ("events", "Events and webinars", "Invitations to events near you.", True),
    ("key-accounts", "Key accounts", "Account management mail, curated by staff.", False),
)
#: The lists' names and descriptions in the page's other languages.
LIST_WORDINGS = {
    "key-accounts": {
        "de": {"name": "Großkunden",
               "description": "Post der Kundenbetreuung, von unserem Team zusammengestellt."},
        "fr": {"name": "Grands comptes",
               "description": "Courrier de la gestion de compte, préparé par notre équipe."},
        "ja": {"name": "主要取引先", "description": "担当者が用意するアカウント管理のご連絡。"},
    },
    "newsletter": {
        "de": {"name": "Monatlicher Newsletter",
               "description": "Neuigkeiten und Geschichten, einmal im Monat."},
        "fr": {"name": "Lettre d'information mensuelle",
               "description": "Actualités et histoires, une fois par mois."},
        "ja": {"name": "月刊ニュースレター",
               "description": "ニュースと読み物を月に一度お届けします。"},
    },
    "product-updates": {
        "de": {"name": "Produktneuheiten",
               "description": "Neue Funktionen und Änderungen an dem, was Sie nutzen."},
        "fr": {"name": "Nouveautés produit",
               "description": "Nouvelles fonctions et changements de ce que vous utilisez."},
        "ja": {"name": "製品アップデート", "description": "ご利用中の製品の新機能と変更点。"},
    },
    "events": {
        "de": {"name": "Veranstaltungen und Webinare",
               "description": "Einladungen zu Veranstaltungen in Ihrer Nähe."},
        "fr": {"name": "Événements et webinaires",
               "description": "Invitations à des événements près de chez vous."},
        "ja": {"name": "イベントとウェビナー", "description": "お近くのイベントへのご招待。"},
    },
}

FIELDS = (
    ("national_id", "National ID number", True, "text", 3),
    ("card_number", "Credit card number", True, "text", 4),
    ("sales_stage", "Sales stage", False, "text", 0),
)

CONSENTS = (
    (
        "store-national-id",
        "storage",
        "national_id",
        None,
        "Store my national ID number",
        "We may store your national ID number, encrypted, to verify your identity for contracts.",
    ),
    (
        "store-card-number",
        "storage",
        "card_number",
        {"field": "sales_stage", "op": "equals", "value": "ready to buy"},
        "Store my card number",
        "We may store your credit card number, encrypted, so that you can order without typing "
        "it again.",
    ),
    (
        "tracking",
        "tracking",
        None,
        None,
        "Engagement tracking",
        "We may record when you open our emails, click their links and view documents we send.",
    ),
    (
        "share-with-partners",
        "custom",
        None,
        {"field": "region", "op": "equals", "value": "EU"},
        "Share my details with partners",
        "We may pass your name and email address to our reseller partners in your country.",
    ),
    (
        "automated-decisions",
        "custom",
        None,
        None,
        "Automated decision-making",
        "We may use automated scoring to decide which offers to show you.",
    ),
)

#: The demo consents' wording in the page's other languages: a German, French or Japanese
#: contact reads them in their language; store-card-number has English only, as a business
#: may have, and shows it to everyone.
CONSENT_WORDINGS = {
    "store-national-id": {
        "de": ("Meine Personalausweisnummer speichern",
               "Wir dürfen Ihre Ausweisnummer verschlüsselt speichern, um Ihre Identität bei "
               "Verträgen zu prüfen."),
        "fr": ("Conserver mon numéro d'identité nationale",
               "Nous pouvons conserver votre numéro d'identité, chiffré, pour vérifier votre "
               "identité lors d'un contrat."),
        "ja": ("マイナンバーの保管",
               "契約時の本人確認のため、お客様の個人番号を暗号化して保管することがあります。"),
    },
    "tracking": {
        "de": ("Nutzungsmessung",
               "Wir dürfen erfassen, wann Sie unsere E-Mails öffnen, ihre Links anklicken und "
               "Dokumente ansehen, die wir Ihnen senden."),
        "fr": ("Mesure d'audience",
               "Nous pouvons enregistrer quand vous ouvrez nos e-mails, cliquez sur leurs liens "
               "et consultez les documents que nous vous envoyons."),
        "ja": ("利用状況の計測",
               "メールの開封、リンクのクリック、お送りした資料の閲覧を記録することがあります。"),
    },
    "share-with-partners": {
        "de": ("Meine Daten an Partner weitergeben",
               "Wir dürfen Ihren Namen und Ihre E-Mail-Adresse an unsere Vertriebspartner in "
               "Ihrem Land weitergeben."),
        "fr": ("Partager mes coordonnées avec des partenaires",
               "Nous pouvons transmettre votre nom et votre adresse e-mail à nos revendeurs "
               "partenaires dans votre pays."),
        "ja": ("提携先への情報提供",
               "お客様のお名前とメールアドレスを、お住まいの国の販売提携先に提供することがあります。"),
    },
    "automated-decisions": {
        "de": ("Automatisierte Entscheidungen",
               "Wir dürfen anhand einer automatischen Bewertung entscheiden, welche Angebote "
               "wir Ihnen zeigen."),
        "fr": ("Décisions automatisées",
               "Nous pouvons utiliser une évaluation automatique pour choisir les offres que "
               "nous vous présentons."),
        "ja": ("自動化された意思決定",
               "自動スコアリングにより、お客様に表示するオファーを決めることがあります。"),
    },
}

POLICY_HTML = (
    "<p>We keep your name, email address and preferences to send you the email you asked for. "
    "Sensitive data is stored only with your consent, encrypted.</p>"
    "<p>You can change your mind at any time on this page.</p>"
)
#: The same statement in the page's other languages.
POLICY_TRANSLATIONS = {
    "de": "<p>Wir speichern Ihren Namen, Ihre E-Mail-Adresse und Ihre Einstellungen, um Ihnen "
          "die gewünschten E-Mails zu senden. Sensible Daten speichern wir nur mit Ihrer "
          "Einwilligung und verschlüsselt.</p>"
          "<p>Sie können Ihre Meinung auf dieser Seite jederzeit ändern.</p>",
    "fr": "<p>Nous conservons votre nom, votre adresse e-mail et vos préférences pour vous "
          "envoyer les e-mails que vous avez demandés. Les données sensibles ne sont conservées "
          "qu'avec votre consentement, chiffrées.</p>"
          "<p>Vous pouvez changer d'avis à tout moment sur cette page.</p>",
    "ja": "<p>ご希望のメールをお送りするため、お名前、メールアドレス、設定を保管します。"
          "機微な情報は、同意をいただいた場合にのみ暗号化して保管します。</p>"
          "<p>このページでいつでも選択を変更できます。</p>",
}

FIRST_NAMES = (
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Keiko",
    "Lena",
    "Marc",
    "Nora",
    "Oskar",
    "Paula",
    "Quentin",
    "Rosa",
)
LAST_NAMES = (
    "Bauer",
    "Martin",
    "Tanaka",
    "Schmidt",
    "Dubois",
    "Smith",
    "Rossi",
    "Sato",
    "Keller",
    "Moreau",
    "Brown",
    "Weber",
)
REGIONS = (("EU", "de"), ("EU", "fr"), ("EU", "en"), ("UK", "en"), ("US", "en"), ("JP", "ja"))
STAGES = ("new", "qualified", "ready to buy", "customer")
CONTACT_COUNT = 36
# A German contact in the EU, an English one in the EU, and one outside the page's audience.
SAMPLE_NUMBERS = (6, 2, 4)


@dataclass
class Summary:
    created: dict[str, int] = field(default_factory=dict)
    admin_password: str = ""

    def count(self, what: str) -> None:
        self.created[what] = self.created.get(what, 0) + 1

    def describe(self) -> str:
        done = ", ".join(f"{n} {what}" for what, n in self.created.items())
        lines = [f"demo data: created {done}" if done else "demo data already loaded: no change"]
        lines.append(f"Back-office login: {ADMIN_EMAIL} / {self.admin_password}")
        return "\n".join(lines)


def _admin_password() -> str:
    """Return the demo admin's password, generated into the instance folder once."""
    path = Path(current_app.instance_path) / "demo-admin.json"
    if path.exists():
        return json.loads(path.read_text())["password"]
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"email": ADMIN_EMAIL, "password": password}))
    return password


def load() -> Summary:
    """Create whatever part of the demo data does not exist yet."""
    summary = Summary(admin_password=_admin_password())
    if (
        db.session.scalar(sa.select(staff.StaffUser.id).where(staff.StaffUser.email == ADMIN_EMAIL))
        is None
    ):
        staff.create_staff(ADMIN_EMAIL, summary.admin_password, "admin")
        summary.count("admin")

    mailing_lists = {}
    for slug, name, description, public in LISTS:
        found = db.session.scalar(
            sa.select(lists.MailingList).where(lists.MailingList.slug == slug)
        )
        if found is None:
            found = lists.create_list(slug, name, description, public=public)
            found.translations = LIST_WORDINGS.get(slug)
            summary.count("mailing lists")
        mailing_lists[slug] = found

    fields = {}
    for name, label, sensitive, value_type, suffix in FIELDS:
        found = contacts.field_definition(name)
        if found is None:
            found = contacts.define_field(
                name, label, sensitive=sensitive, value_type=value_type, visible_suffix=suffix
            )
            summary.count("custom fields")
        fields[name] = found

    definitions = {}
    for slug, kind, field_name, condition, title, text in CONSENTS:
        translations = CONSENT_WORDINGS.get(slug)
        found = db.session.scalar(
            sa.select(consent.ConsentDefinition).where(consent.ConsentDefinition.slug == slug)
        )
        if found is None:
            found = consent.define(
                slug, kind, title, text, display_condition=condition, field=fields.get(field_name),
                translations=translations,
            )
            summary.count("consents")
        definitions[slug] = found

    if settings.current() is None:
        settings.save(
            {
                "policy_html": POLICY_HTML,
                "policy_translations": POLICY_TRANSLATIONS,
                "audience_rule": {"field": "region", "op": "in", "value": ["EU", "UK", "JP"]},
            },
            based_on=0,
            author="demo",
            note="demo settings",
        )
        summary.count("settings version")

    for number in range(1, CONTACT_COUNT + 1):
        email = f"contact{number:02d}@demo.example"
        if contacts.find_by_email(email) is None:
            _make_contact(number, email, mailing_lists, fields, definitions)
            summary.count("contacts")
    # A draft a newcomer can preview and send from the back office (Campaigns).
    campaigns.ensure_demo_draft("newsletter", author="demo")
    # Saved filters and reveal rights, so the contacts pages are usable on the first day.
    contact_records.prepare_demo(ADMIN_EMAIL, summary.count)
    return summary


def _make_contact(number, email, mailing_lists, fields, definitions) -> None:
    region, language = REGIONS[number % len(REGIONS)]
    # A per-contact generator, so the data of contact N does not depend on which ran before.
    rng = random.Random(SEED * 1000 + number)
    staff_opt_in = number % 7 == 0
    contact = contacts.add_contact(
        email,
        kind="contact" if number % 3 == 0 else "lead",
        first_name=FIRST_NAMES[number % len(FIRST_NAMES)],
        last_name=LAST_NAMES[number % len(LAST_NAMES)],
        phone=f"+49 30 5550{number:03d}" if number % 2 else None,
        region=region,
        language=language if language in current_app.config["PORTAL_LANGUAGES"] else None,
        opt_in=OptIn.SINGLE_USER if staff_opt_in else OptIn.NONE,
        method="demo",
        actor="demo",
        reason="met at a trade fair" if staff_opt_in else None,
    )
    evidence = Evidence(ip_address=f"198.51.100.{number}", user_agent="Mozilla/5.0 (demo)")
    contacts.set_field_value(contact, fields["sales_stage"], rng.choice(STAGES))

    # Opt-in histories: most confirm by double opt-in; some opt out later.
    path = number % 6
    if path in (1, 2, 3):
        contacts.record_opt_in(
            contact, OptIn.DOUBLE, method="email_confirmation", actor="contact", evidence=evidence
        )
    elif path == 4:
        contacts.record_opt_in(
            contact, OptIn.SINGLE_WEBFORM, method="webform", actor="contact", evidence=evidence
        )
    if number % 9 == 0:
        # As staff record it: the reason goes to an opt-in note, which erasure clears.
        optin.transition(
            contact,
            optin.Event.STAFF_OPT_OUT,
            method="staff",
            actor="demo",
            reason="asked by phone",
        )
    elif number % 10 == 0:
        contacts.record_opt_in(
            contact, OptIn.OPTOUT_CONTACT, method="page", actor="contact", evidence=evidence
        )

    for slug, mailing_list in mailing_lists.items():
        if rng.random() < (0.2 if slug == "key-accounts" else 0.5):
            lists.set_subscription(contact, mailing_list, True, method="demo", actor="demo")
    if number % 8 == 0:
        lists.set_subscription(
            contact, mailing_lists["newsletter"], True, method="demo", actor="demo"
        )
        lists.set_subscription(
            contact,
            mailing_lists["newsletter"],
            False,
            method="page",
            actor="contact",
            evidence=evidence,
        )

    for definition in definitions.values():
        roll = rng.random()
        if roll < 0.4:
            continue  # never asked
        version = definition.current_version
        consent.decide(
            contact,
            version,
            True,
            method="page",
            actor="contact",
            evidence=evidence,
            language=contact.language or "en",
        )
        if roll > 0.85:
            consent.decide(
                contact,
                version,
                False,
                method="page",
                actor="contact",
                evidence=evidence,
                language=contact.language or "en",
            )
        elif definition.kind == "storage":
            value = (
                f"{rng.randrange(10**11, 10**12)}"
                if definition.slug.endswith("id")
                else f"4111 1111 1111 {rng.randrange(1000, 9999)}"
            )
            contacts.set_field_value(contact, definition.field, value)

    if number in SAMPLE_NUMBERS + (10,):
        # Contact 10 opted out: staff see its notice refused by the gate, with the reason.
        _queue_preference_mail(contact)
    if number == 12:
        contacts.request_erasure(contact, method="page", actor="contact", evidence=evidence)
    if number == 17:
        contacts.stop_processing(contact, method="page", actor="contact", evidence=evidence)


def _queue_preference_mail(contact: contacts.Contact) -> None:
    """Queue the mail that tells a contact where their page is (it shows in the mailbox)."""
    link_requests.send_link(contact, "notice", lazy_gettext("Your privacy preferences"))


#: The languages of the demo's contacts, as the sample links name them.
LANGUAGE_NAMES = {"de": "German", "en": "English", "fr": "French", "ja": "Japanese"}


def sample_links(count: int = 3) -> list[tuple[str, str]]:
    """Return preference links of a few demo contacts of different regions and languages,
    each with a line saying whose it is and what their page shows."""
    chosen = []
    for number in SAMPLE_NUMBERS:
        contact = contacts.find_by_email(f"contact{number:02d}@demo.example")
        if contact is not None:
            language = LANGUAGE_NAMES.get(contact.language or "en", contact.language)
            shows = (
                "the whole page"
                if page_for(contact).full
                else "the email options only: outside the page's audience rule"
            )
            about = f"{contact.email}, {language}, region {contact.region or 'none'}: {shows}"
            chosen.append((about, manage_url(contact)))
    return chosen[:count]
