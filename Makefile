# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app wsgi
DEMO := FLASK_PORTAL_DEMO=true
CATALOGS := $(wildcard portal/translations/*/LC_MESSAGES/messages.po)

.PHONY: run test install install-test translations extract-messages lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed translations
install-test: $(VENV)/.installed-test translations

# Compiled catalogues are build output, made from the .po files under version control.
translations: $(CATALOGS:.po=.mo)
portal/translations/%/LC_MESSAGES/messages.mo: portal/translations/%/LC_MESSAGES/messages.po $(VENV)/.installed
	$(BIN)/pybabel -q compile -i $< -o $@

# For maintainers: gather the marked strings (Babel's default keywords such as _, plus _l) into
# the template and merge them into every catalogue; tests/test_i18n.py extracts the same way.
# A new language starts with `$(BIN)/pybabel init -i $(POT) -d portal/translations -l xx`.
POT := portal/translations/messages.pot
extract-messages: $(VENV)/.installed
	$(BIN)/pybabel extract --no-location --sort-by-file --add-comments=TRANSLATORS: \
		--project=consent-portal --copyright-holder="the consent-portal authors" -F babel.cfg -k _l -o $(POT) .
	$(if $(CATALOGS),$(BIN)/pybabel update --no-fuzzy-matching --ignore-obsolete -i $(POT) -d portal/translations)

run: install
	$(DEMO) $(FLASK) db upgrade
	$(DEMO) $(FLASK) demo
	$(DEMO) $(FLASK) serve --host 127.0.0.1 --port 5000

test: install-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .hypothesis
	find portal/translations -name '*.mo' -delete
