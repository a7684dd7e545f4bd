"""The API keys page and the command generator."""

import shlex

import pytest
from django.utils import timezone

from organizations.audit import Action
from organizations.models import AuditEvent
from sessions_app.forms import shell_quote
from sessions_app.models import ApiKey, hash_api_key
from tests import factories

from .conftest import Engine


def choices(organization, **changes):
    """What the generator's form submits, with every field filled in as a person leaves it."""
    values = {
        "org": organization.public_id,
        "project_path": "/builds/qa/project.prj",
        "test_suite_path": "Test Suites/Smoke",
        "browser": "Chrome",
        "retry": "0",
        "wait": "",
    }
    return {**values, **changes}


def created_key(response):
    html = response.content.decode()
    start = html.index('id="new-api-key">') + len('id="new-api-key">')
    return html[start : html.index("<", start)]


def test_pages_need_a_signed_in_person(client, db):
    """Signed-out visitors are sent to sign in."""
    for url in ("/api-keys/", "/command-generator/"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/accounts/login/" in response["Location"]


def test_a_created_key_is_shown_once_and_only_its_hash_is_kept(member_client, member_user, organization):
    """Creating a key shows it once; the list afterwards shows only its prefix."""
    response = member_client.post(
        "/api-keys/new/", {"name": "Jenkins", "organization": organization.public_id, "expires": "2099-01-31"}
    )
    assert response.status_code == 200
    raw_key = created_key(response)
    assert raw_key.startswith("kat_")
    api_key = ApiKey.objects.get(user=member_user)
    assert api_key.key_hash == hash_api_key(raw_key)
    assert api_key.organization == organization
    assert raw_key[:12] == api_key.prefix
    listing = member_client.get("/api-keys/").content.decode()
    assert raw_key not in listing
    assert api_key.prefix in listing
    assert "Jenkins" in listing
    assert AuditEvent.objects.filter(action=Action.API_KEY_CREATED, actor=member_user).exists()


def test_htmx_creation_answers_the_panel_only(member_client):
    """With htmx the answer is the panel fragment holding the new key, not a whole page."""
    response = member_client.post("/api-keys/new/", {"name": "Jenkins"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="api-keys-panel">')
    assert "<html" not in html
    assert created_key(response).startswith("kat_")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": ""}, "This field is required."),
        ({"name": "   "}, "This field is required."),
        ({"name": "x", "expires": "2001-01-01"}, "today or later"),
        ({"name": "x", "expires": "soon"}, "Enter a valid date."),
        ({"name": "x" * 101}, "at most 100 characters"),
        ({"name": "x", "expires": "9999-12-31"}, "before 9999-12-31"),
    ],
)
def test_bad_input_re_renders_the_form_with_the_reason(member_client, data, message):
    """Invalid input keeps the page, says what is wrong and creates nothing."""
    response = member_client.post("/api-keys/new/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_key_cannot_be_restricted_to_someone_elses_organization(member_client, other_organization):
    """Only the person's own organizations are offered, and another's id is refused."""
    response = member_client.post("/api-keys/new/", {"name": "x", "organization": other_organization.public_id})
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_revoking_a_key_stops_it_and_is_audited(client, member_client, member_user, re_pool):
    """Revoke answers with the list again; the key is refused by the API from then on."""
    api_key = factories.ApiKeyFactory(user=member_user)
    response = member_client.post(f"/api-keys/{api_key.pk}/revoke/")
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert api_key.status == "revoked"
    assert Engine(client, api_key.raw_key).activate().status_code == 401
    assert AuditEvent.objects.filter(action=Action.API_KEY_REVOKED).exists()
    page = member_client.get("/api-keys/").content.decode()
    assert "Revoked the key" in page
    assert f"/api-keys/{api_key.pk}/revoke/" not in page


def test_revoking_with_htmx_answers_the_panel(member_client, member_user):
    """With htmx the panel comes back with the key marked revoked and a notice."""
    api_key = factories.ApiKeyFactory(user=member_user, name="Old laptop")
    html = member_client.post(f"/api-keys/{api_key.pk}/revoke/", headers={"HX-Request": "true"}).content.decode()
    assert "Revoked the key Old laptop" in html
    assert "Revoked</span>" in html


def test_someone_elses_key_is_not_found(member_client):
    """Another person's key cannot be revoked, or even confirmed to exist."""
    theirs = factories.ApiKeyFactory()
    assert member_client.post(f"/api-keys/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_revoke_is_a_post(member_client, member_user):
    """A GET never revokes: it asks, with a form that posts."""
    api_key = factories.ApiKeyFactory(user=member_user)
    response = member_client.get(f"/api-keys/{api_key.pk}/revoke/")
    assert response.status_code == 200
    assert "Revoke this key?" in response.text
    assert f'action="/api-keys/{api_key.pk}/revoke/"' in response.text
    api_key.refresh_from_db()
    assert api_key.revoked_at is None


def test_the_list_shows_only_my_keys_in_a_fixed_number_of_queries(
    member_client, member_user, organization, django_assert_max_num_queries
):
    """Many keys cost no more queries than a few, and another person's keys never show."""
    for n in range(30):
        factories.ApiKeyFactory(user=member_user, name=f"key {n}", organization=organization if n % 2 else None)
    factories.ApiKeyFactory(name="someone else's")
    ApiKey.objects.filter(name="key 3").update(revoked_at=timezone.now())
    with django_assert_max_num_queries(8):
        html = member_client.get("/api-keys/").content.decode()
    assert "someone else&#x27;s" not in html
    assert "key 29" in html
    assert "Page 1 of 2" in html
    assert "key 0" in member_client.get("/api-keys/?page=2").content.decode()


# The command generator


def test_the_command_has_every_part_filled_in(member_client, organization, re_pool):
    """The generated katalonc command names the project, suite, browser, retries, organization and this server."""
    response = member_client.get(
        "/command-generator/",
        {
            "org": organization.public_id,
            "project_path": "/home/ci/My Project/shop.prj",
            "test_suite_path": "Test Suites/Checkout",
            "browser": "Firefox (headless)",
            "retry": "2",
            "release_previous": "on",
        },
    )
    command = response.context["command"]
    assert shlex.split(command) == [
        "katalonc",
        "-noSplash",
        "-runMode=console",
        "-projectPath=/home/ci/My Project/shop.prj",
        "-retry=2",
        "-testSuitePath=Test Suites/Checkout",
        "-browserType=Firefox (headless)",
        "-apiKey=<your-api-key>",
        f"-orgID={organization.public_id}",
        "-serverUrl=http://testserver",
        "-licenseRelease=true",
    ]


def test_the_nav_link_preselects_the_organization(member_client, member_user, organization, re_pool):
    """?org= from the navigation chooses that organization and shows the defaults without errors."""
    second = factories.OrganizationFactory(name="Beta Org")
    factories.MembershipFactory(organization=second, user=member_user)
    factories.LicensePoolFactory(organization=second)
    response = member_client.get("/command-generator/", {"org": second.public_id})
    assert f"-orgID={second.public_id}" in response.context["command"]
    assert "errorlist" not in response.content.decode()
    assert "-licenseRelease" not in response.context["command"]


@pytest.mark.parametrize("org", ["\x00", "nope", "9" * 300])
def test_a_mangled_nav_link_falls_back_to_my_first_organization(member_client, organization, re_pool, org):
    """An ?org= that names no organization of mine (PostgreSQL refuses a NUL outright) shows the first one."""
    for path in ("/command-generator/", "/command-generator/key/"):
        response = getattr(member_client, "get" if path.endswith("generator/") else "post")(path, {"org": org})
        assert response.status_code == 200
        assert f"-orgID={organization.public_id}" in response.context["command"]


def test_only_organizations_with_runtime_engine_are_offered(member_client, member_user, organization, re_pool):
    """Organizations with only KSE, or that are not mine, are not choices."""
    kse_only = factories.OrganizationFactory(name="KSE Only")
    factories.MembershipFactory(organization=kse_only, user=member_user)
    factories.LicensePoolFactory(organization=kse_only, product="KSE")
    foreign = factories.LicensePoolFactory(organization=factories.OrganizationFactory(name="Strangers"))
    form = member_client.get("/command-generator/").context["form"]
    assert list(form.fields["org"].queryset) == [organization]
    response = member_client.get("/command-generator/", choices(foreign.organization))
    assert foreign.organization.public_id not in response.content.decode()
    assert "Select a valid choice" in response.content.decode()


def test_a_person_without_runtime_engine_is_told_so(member_client, organization):
    """With no RE pool anywhere, the page says there is nothing to generate."""
    assert (
        "None of your organizations has Runtime Engine licenses"
        in member_client.get("/command-generator/").content.decode()
    )


def test_the_wrapped_command_runs_the_same_katalonc_inside_katalon_license(member_client, organization, re_pool):
    """The wrapped form keeps the key out of the command line and adds the client's own options."""
    response = member_client.get(
        "/command-generator/",
        choices(organization, release_previous="on", ephemeral="on", wait="1h30m", browser="Firefox"),
    )
    *exports, run = response.context["commands"]["wrapped"].split("\n")
    assert exports == ['export KATALON_ADMIN_URL="http://testserver"', "export KATALON_API_KEY='<your-api-key>'"]
    words = shlex.split(run)
    separator = words.index("--")
    assert words[:separator] == [
        "katalon-license", "run", "--org", organization.public_id, "--ephemeral", "--release-previous",
        "--wait", "1h30m",
    ]  # fmt: skip
    assert words[separator + 1 :] == [
        "katalonc", "-noSplash", "-runMode=console", "-projectPath=/builds/qa/project.prj", "-retry=0",
        "-testSuitePath=Test Suites/Smoke", "-browserType=Firefox",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retry", "-5", "Retries must be a whole number from 0 to 100."),
        ("retry", "", "Retries must be a whole number from 0 to 100."),
        ("project_path", "", "Enter the project path (up to 1000 characters)."),
        ("project_path", "p" * 1001, "Enter the project path (up to 1000 characters)."),
        ("test_suite_path", "", "Enter the test suite path (up to 1000 characters)."),
        ("wait", "soon", "Write the wait like 90s, 30m, 2h or 1h30m"),
    ],
)
def test_an_invalid_choice_is_named_beside_its_field_and_no_command_is_offered(
    member_client, organization, re_pool, field, value, message
):
    """A command quietly corrected (retries -5 shown as -retry=0, an empty path as a placeholder)
    would run something else than what was asked; the field says what is wrong instead."""
    response = member_client.get("/command-generator/", choices(organization, **{field: value}))
    html = response.content.decode()
    assert response.context["commands"] is None
    error_at = html.index(f'id="id_{field}_error"')
    assert message in html[error_at : error_at + 300]
    assert "Fix the fields marked above to see the commands." in html
    assert "-retry=0" not in html


def test_a_fresh_key_goes_into_the_command_and_works(client, member_client, member_user, organization, re_pool):
    """Creating a key from the generator puts it in the command, restricted to that organization."""
    response = member_client.post("/command-generator/key/", choices(organization))
    arguments = dict(part.split("=", 1) for part in shlex.split(response.context["command"])[3:])
    raw_key = arguments["-apiKey"]
    assert ApiKey.objects.get(key_hash=hash_api_key(raw_key)).organization == organization
    assert f"export KATALON_API_KEY={raw_key}" in response.context["commands"]["wrapped"]
    assert Engine(client, raw_key).activate(org_id=arguments["-orgID"]).status_code == 201


def test_each_fresh_key_has_a_name_of_its_own(member_client, member_user, organization, re_pool):
    """Keys made in the same minute are told apart on the API keys page."""
    for _ in range(3):
        member_client.post("/command-generator/key/", choices(organization), headers={"HX-Request": "true"})
    names = sorted(ApiKey.objects.filter(user=member_user).values_list("name", flat=True))
    assert len(set(names)) == 3
    assert all(name.startswith("katalonc for Acme QA (") for name in names)


def test_htmx_gets_the_new_key_panel_only(member_client, organization, re_pool):
    """In the browser the commands are built by the page; a created key comes back as its panel,
    which the page keeps until it is dismissed."""
    html = member_client.post(
        "/command-generator/key/", choices(organization, retry="-1"), headers={"HX-Request": "true"}
    ).content.decode()
    api_key = ApiKey.objects.get()
    assert html.lstrip().startswith('<section class="new-key"')
    assert f'data-org="{organization.public_id}"' in html
    assert api_key.name in html and "<form" not in html


def test_a_fresh_key_for_an_organization_with_a_long_name(member_client, member_user):
    """The key's name is cut to fit, however long the organization's name is."""
    organization = factories.OrganizationFactory(name="Q" * 200)
    factories.MembershipFactory(organization=organization, user=member_user)
    factories.LicensePoolFactory(organization=organization, product="RE")
    response = member_client.post("/command-generator/key/", choices(organization))
    assert response.status_code == 200
    api_key = ApiKey.objects.get()
    assert api_key.organization == organization
    assert api_key.name.startswith("katalonc for QQQ")
    assert len(api_key.name) <= 100


def test_a_fresh_key_is_only_for_my_organizations(member_client, other_organization):
    """The generator will not make a key for an organization the person is not in."""
    factories.LicensePoolFactory(organization=other_organization)
    member_client.post("/command-generator/key/", {"org": other_organization.public_id, "browser": "Chrome"})
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    "value",
    ['my "project"', "$(rm -rf ~)", "`id`", "back\\slash", "it's", "wow!", "line\nbreak", "plain path"],
)
def test_values_are_quoted_safely_for_a_shell(value):
    """Whatever a path contains, the shell reads it back as exactly that value."""
    assert shlex.split(f"-projectPath={shell_quote(value)}") == [f"-projectPath={value}"]


def test_the_generator_costs_a_fixed_number_of_queries(member_client, member_user, django_assert_max_num_queries):
    """However many organizations the person is in, the page costs the same few queries."""
    for n in range(15):
        organization = factories.OrganizationFactory(name=f"Org {n:02d}")
        factories.MembershipFactory(organization=organization, user=member_user)
        factories.LicensePoolFactory(organization=organization)
    with django_assert_max_num_queries(8):
        response = member_client.get("/command-generator/")
    assert "Org 14" in response.content.decode()
